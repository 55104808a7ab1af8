import Glibc

/// Owns the C strings of one call into C (a spawn plan, a host program's
/// argv and envp); `release()` frees them once the call has returned.
public final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []
    private var arrays: [UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>] = []

    public init() {}

    public func string(_ s: String?) -> UnsafePointer<CChar>? {
        guard let s else { return nil }
        guard let p = strdup(s) else { return nil }
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    public func stringArray(_ items: [String]) -> UnsafePointer<UnsafeMutablePointer<CChar>?> {
        let arr = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: items.count + 1)
        for (i, s) in items.enumerated() {
            let p = strdup(s)
            if let p { blocks.append(UnsafeMutableRawPointer(p)) }
            arr[i] = p
        }
        arr[items.count] = nil
        arrays.append(arr)
        return UnsafePointer(arr)
    }

    public func release() {
        for b in blocks { free(b) }
        for a in arrays { a.deallocate() }
        blocks.removeAll()
        arrays.removeAll()
    }
}
