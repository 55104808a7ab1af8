#!/usr/bin/env python3
"""Copies an OCI image layout with its single layer trimmed to what the
integration suite needs (no docs, man pages, locales, perl, gconv, apt and
dpkg caches), uncompressed, so that a device run can carry it within its
64 MiB (xz compresses a plain tar far better than a gzipped one).

    tests/device/slim-image.py rootfs/out/python-3.11 .device/image
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

DROP = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/", "usr/share/perl",
        "usr/lib/x86_64-linux-gnu/perl", "usr/lib/x86_64-linux-gnu/gconv/", "usr/bin/perl",
        "var/cache/", "var/lib/apt/lists/", "usr/share/zoneinfo/", "usr/share/bash-completion/",
        "usr/lib/python3.11/ensurepip/", "usr/lib/python3.11/pydoc_data/", "usr/lib/python3.11/lib2to3/",
        "usr/lib/python3.11/idlelib/", "usr/lib/python3.11/tkinter/", "usr/lib/python3.11/turtledemo/")


def blob(layout, digest):
    return os.path.join(layout, "blobs", *digest.split(":"))


def write_blob(out, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob(out, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return digest, len(data)


def main(src, out):
    index = json.load(open(os.path.join(src, "index.json")))
    manifest = json.load(open(blob(src, index["manifests"][0]["digest"])))
    config = json.load(open(blob(src, manifest["config"]["digest"])))
    (layer,) = manifest["layers"]
    raw = open(blob(src, layer["digest"]), "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    buf = io.BytesIO()
    kept = dropped = 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tin, tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            name = m.name.lstrip("./")
            if name.startswith(DROP) or any(name + "/" == d for d in DROP):
                dropped += 1
                continue
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
            kept += 1
    layer_bytes = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    os.makedirs(out, exist_ok=True)
    ldigest, lsize = write_blob(out, layer_bytes)
    config["rootfs"]["diff_ids"] = [diff_id]
    cdigest, csize = write_blob(out, json.dumps(config).encode())
    manifest["config"] = dict(manifest["config"], digest=cdigest, size=csize)
    manifest["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldigest, "size": lsize}]
    mdigest, msize = write_blob(out, json.dumps(manifest).encode())
    entry = dict(index["manifests"][0], digest=mdigest, size=msize)
    json.dump({"schemaVersion": 2, "manifests": [entry]}, open(os.path.join(out, "index.json"), "w"))
    json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
    print("%s: %d entries kept, %d dropped, layer %.1f MiB" % (out, kept, dropped, lsize / 1048576.0))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
