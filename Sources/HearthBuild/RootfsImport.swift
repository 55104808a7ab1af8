#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import HearthImage
import HearthOS
import Synchronization

/// `hearth image import DIR` of a plain root filesystem (what `debootstrap`,
/// `mmdebstrap --format=directory` or `docker export | tar x` leave): the
/// tree becomes one layer (written as a build writes one, device nodes and
/// FIFOs left out, nothing on the host followed) and an image with a
/// minimal config (PATH, `/bin/sh`, the host's platform).
public enum RootfsImport {
    public static let defaultEnv = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

    private static let counter = Atomic<Int>(0)

    public static func importDirectory(_ path: String, name: String?, store: ImageStore) throws -> ImageSummary {
        guard let name else {
            throw HearthError.invalid("\(path) is a root filesystem directory, which carries no image name; pass one: hearth image import \(path) --name NAME[:TAG]")
        }
        let imageName = try ImageName.normalize(name)
        let tar = store.scratchDirectory + "/\(getpid())-rootfs-\(counter.wrappingAdd(1, ordering: .relaxed).newValue).tar"
        defer { unlink(tar) }
        var source = LayerSource(root: path)
        source.plainRootfs = true
        let layer = try LayerWriter.write(source, to: tar)
        store.pinLayers([layer.diffID])
        defer { store.unpinLayers([layer.diffID]) }
        let size = try store.installLayer(tarAt: tar, diffID: layer.diffID)
        let base = ImageDetails(name: imageName, id: "", diffIDs: [], env: defaultEnv, entrypoint: [], cmd: ["/bin/sh"],
                                workingDir: "", user: "", os: ImageDetails.hostPlatform.os,
                                architecture: ImageDetails.hostPlatform.architecture)
        return try store.recordBuiltImage(name: imageName, base: base, layers: [layer.diffID], env: defaultEnv,
                                          sizes: [layer.diffID: size])
    }
}
