#!/usr/bin/env python3
"""Builds the pull benchmark's large image and pushes it to a local registry.

~200 MB in 4 gzip layers of mixed content (half incompressible, half text), as
gcr.io/bench/big:1 mirrored at REGISTRY (default 127.0.0.1:5000, path bench/big).
Deterministic: the same bytes every run, so a second run pushes nothing new.
Stdlib only.
"""
import gzip, hashlib, io, json, os, random, sys, tarfile, urllib.request

REGISTRY = os.environ.get("REGISTRY", "127.0.0.1:5000")
REPO, TAG = "bench/big", "1"
LAYERS, FILES_PER_LAYER, FILE_MB = 4, 5, 10


def layer(index):
    rng = random.Random(index)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in range(FILES_PER_LAYER):
            size = FILE_MB << 20
            if f % 2 == 0:
                data = rng.randbytes(size)
            else:
                words = [b"container", b"runtime", b"layer", b"overlay", b"kubelet", b"registry"]
                data = b" ".join(rng.choice(words) for _ in range(size // 7))[:size]
            info = tarfile.TarInfo(f"data/layer{index}/file{f}.bin")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw, gzip.compress(raw, compresslevel=1, mtime=0)


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(req)


def push_blob(data):
    d = digest(data)
    try:
        request("HEAD", f"http://{REGISTRY}/v2/{REPO}/blobs/{d}")
        return d
    except urllib.error.HTTPError:
        pass
    location = request("POST", f"http://{REGISTRY}/v2/{REPO}/blobs/uploads/").headers["Location"]
    if location.startswith("/"):
        location = f"http://{REGISTRY}{location}"
    sep = "&" if "?" in location else "?"
    request("PUT", f"{location}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"})
    return d


def main():
    diff_ids, descriptors, total = [], [], 0
    for i in range(LAYERS):
        raw, gz = layer(i)
        diff_ids.append(digest(raw))
        descriptors.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "size": len(gz), "digest": push_blob(gz)})
        total += len(gz)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": len(config), "digest": push_blob(config)},
                           "layers": descriptors}).encode()
    request("PUT", f"http://{REGISTRY}/v2/{REPO}/manifests/{TAG}", manifest,
            {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    print(f"pushed gcr.io/{REPO}:{TAG} ({LAYERS} layers, {total / 1e6:.0f} MB compressed)", file=sys.stderr)


if __name__ == "__main__":
    main()
