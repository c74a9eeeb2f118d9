#!/usr/bin/env python3
"""Builds the crius installer image without docker, reproducibly.

The image is an OCI image layout written by this script (Python's standard
library only): two gzip layers, the tools (busybox, kubectl) and the crius
payload (the crius binary, the glibc it was linked against, the systemd unit,
the installer script, kvm-probe). Every tar entry has a fixed mtime
(SOURCE_DATE_EPOCH, default 0), owner 0:0 and no user or group names; entries
are sorted; gzip headers carry mtime 0 and no file name; the config's
`created` is the same fixed time. The same inputs give the same digests.

    deploy/image/build.py [--crius target/release/crius] [--out target/installer-image]
                          [--push HOST[:PORT]/REPOSITORY:TAG]

--push uploads the blobs and the manifest with the OCI distribution API
(HEAD, POST and PUT on /v2/.../blobs/uploads/, PUT /v2/.../manifests/TAG),
over plain HTTP for loopback registries and HTTPS otherwise, anonymously.

Needs: gcc and libc6-dev (kvm-probe is linked statically), binutils (strip)
and busybox-static (/bin/busybox), Debian packages that .ci/setup-host
installs. kubectl (for node labels) is Debian's static build from the
kubernetes-client package (1.20: it only gets and patches nodes and patches
the DaemonSet, which every API server since serves); without --kubectl the
script fetches that package once with `apt-get download` into
target/installer-tools/ and uses it from there.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
PAYLOAD = "opt/crius"


def workspace_version():
    text = (REPO / "Cargo.toml").read_text()
    match = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if not match:
        sys.exit("build.py: no [workspace.package] version in Cargo.toml")
    return match.group(1)


def is_static_elf(path):
    """Whether the ELF file has no PT_INTERP program header (no dynamic loader)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        sys.exit(f"build.py: {path} is not a 64-bit ELF file")
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if int.from_bytes(data[start : start + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def shared_libraries(binary):
    """(soname, resolved path) of every library ldd lists, and the loader."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            name, rest = line.split("=>", 1)
            target = rest.split("(")[0].strip()
            if target:
                libs.append((name.strip(), Path(target).resolve()))
        elif line.startswith("/"):
            loader = Path(line.split("(")[0].strip())
            libs.append((loader.name, loader.resolve()))
    if not any(name.startswith("ld-linux") for name, _ in libs):
        sys.exit(f"build.py: ldd {binary} names no dynamic loader")
    return libs


class Layer:
    """A tar layer built from entries added in any order and written sorted."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def dir(self, path, mode=0o755):
        parts = Path(path).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.entries:
                self.entries[sub] = ("dir", 0o755 if i < len(parts) else mode, None)

    def file(self, path, data, mode):
        self.parent(path)
        self.entries[path] = ("file", mode, data)

    def symlink(self, path, target):
        self.parent(path)
        self.entries[path] = ("symlink", 0o777, target)

    def parent(self, path):
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])

    def tar(self):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, data = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = self.mtime, mode, 0, 0, "", ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def gzip_bytes(data, level):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=level) as gz:
        gz.write(data)
    return out.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def debian_kubectl():
    """kubectl from Debian's kubernetes-client package, downloaded once into target/."""
    tools = REPO / "target/installer-tools"
    kubectl = tools / "kubectl"
    if kubectl.is_file():
        return kubectl
    tools.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tools) as tmp:
        subprocess.run(["apt-get", "download", "-q", "kubernetes-client"], cwd=tmp, check=True)
        (deb,) = Path(tmp).glob("kubernetes-client_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        shutil.copy2(Path(tmp) / "root/usr/bin/kubectl", kubectl.with_suffix(".new"))
        kubectl.with_suffix(".new").rename(kubectl)
        (tools / "kubectl.source").write_text(deb.name + "\n")
    return kubectl


def tools_layer(args, mtime):
    layer = Layer(mtime)
    busybox = Path(args.busybox)
    if not is_static_elf(busybox):
        sys.exit(f"build.py: {busybox} is not static (install busybox-static)")
    layer.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in sorted(set(applets) - {"busybox"}):
        layer.symlink(f"bin/{applet}", "busybox")
    kubectl = Path(args.kubectl) if args.kubectl else debian_kubectl()
    if not is_static_elf(kubectl):
        sys.exit(f"build.py: {kubectl} is not static")
    layer.file("usr/bin/kubectl", kubectl.read_bytes(), 0o755)
    layer.dir("tmp", 0o1777)
    layer.dir("etc/crius-installer")
    layer.dir("host")
    return layer


def payload_layer(args, mtime, work):
    layer = Layer(mtime)
    crius = Path(args.crius)
    stripped = work / "crius"
    # Debug line tables are most of a release binary; the node needs none of them.
    subprocess.run(["strip", "--strip-debug", "-o", str(stripped), str(crius)], check=True)
    layer.file(f"{PAYLOAD}/bin/crius", stripped.read_bytes(), 0o755)
    for name, path in shared_libraries(crius):
        layer.file(f"{PAYLOAD}/lib/{name}", path.read_bytes(), 0o755)
    probe = work / "kvm-probe"
    cc = os.environ.get("CC", "gcc")
    source = REPO / "deploy/installer/kvm-probe.c"
    subprocess.run([cc, "-static", "-Os", "-Wall", "-o", str(probe), str(source)], check=True)
    subprocess.run(["strip", str(probe)], check=True)
    layer.file(f"{PAYLOAD}/bin/kvm-probe", probe.read_bytes(), 0o755)
    unit = (REPO / "deploy/systemd/crius.service").read_bytes()
    layer.file(f"{PAYLOAD}/lib/systemd/crius.service", unit, 0o644)
    installer = (REPO / "deploy/installer/installer.sh").read_bytes()
    layer.file(f"{PAYLOAD}/installer.sh", installer, 0o755)
    return layer


def build(args):
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    version = args.version or workspace_version()
    blobs = {}
    with tempfile.TemporaryDirectory() as tmp:
        layers = [tools_layer(args, mtime), payload_layer(args, mtime, Path(tmp))]
        descriptors, diff_ids = [], []
        for layer in layers:
            tar = layer.tar()
            blob = gzip_bytes(tar, args.level)
            diff_ids.append(sha256(tar))
            digest = sha256(blob)
            blobs[digest] = blob
            descriptors.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(blob)})
    labels = {
        "org.opencontainers.image.title": "crius-installer",
        "org.opencontainers.image.description": "installs the crius CRI runtime on a Kubernetes node",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": "https://github.com/crius-runtime/crius",
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": [f"/{PAYLOAD}/installer.sh"],
            "Env": ["PATH=/bin:/usr/bin:/opt/crius/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "deploy/image/build.py"}],
    }
    config_blob = canonical_json(config)
    config_digest = sha256(config_blob)
    blobs[config_digest] = config_blob
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": descriptors,
        "annotations": {"org.opencontainers.image.version": version, "org.opencontainers.image.created": created},
    }
    manifest_blob = canonical_json(manifest)
    manifest_digest = sha256(manifest_blob)
    blobs[manifest_digest] = manifest_blob
    write_layout(Path(args.out), blobs, manifest_digest, len(manifest_blob), version)
    return blobs, manifest_blob, manifest_digest, [config_digest] + [d["digest"] for d in descriptors]


def write_layout(out, blobs, manifest_digest, manifest_size, tag):
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs/sha256").mkdir(parents=True)
    for digest, blob in blobs.items():
        (out / "blobs/sha256" / digest.split(":", 1)[1]).write_bytes(blob)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    (out / "index.json").write_bytes(canonical_json(index))


def parse_reference(ref):
    """HOST[:PORT]/REPOSITORY:TAG -> (base URL, repository, tag)."""
    host, _, rest = ref.partition("/")
    if not rest or ("." not in host and ":" not in host and host != "localhost"):
        sys.exit(f"build.py: --push needs HOST[:PORT]/REPOSITORY:TAG, got {ref!r}")
    repository, _, tag = rest.rpartition(":")
    if not repository or "/" in tag:
        sys.exit(f"build.py: --push needs a tag: {ref!r}")
    hostname = host.rsplit(":", 1)[0].strip("[]")
    loopback = hostname in ("localhost", "::1") or hostname.startswith("127.")
    return f"{'http' if loopback else 'https'}://{host}", repository, tag


def request(method, url, data=None, headers=None):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=120) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def push(ref, blobs, manifest_blob, manifest_digest, blob_digests):
    base, repository, tag = parse_reference(ref)
    for digest in blob_digests:
        blob = blobs[digest]
        status, _, _ = request("HEAD", f"{base}/v2/{repository}/blobs/{digest}")
        if status == 200:
            print(f"build.py: {digest} already in {base}/{repository}")
            continue
        status, headers, body = request("POST", f"{base}/v2/{repository}/blobs/uploads/", b"")
        if status != 202 or "Location" not in headers:
            sys.exit(f"build.py: start upload of {digest}: HTTP {status}: {body[:300]!r}")
        location = urllib.parse.urljoin(base + "/", headers["Location"])
        separator = "&" if "?" in location else "?"
        put_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))}
        status, _, body = request("PUT", f"{location}{separator}digest={digest}", blob, put_headers)
        if status != 201:
            sys.exit(f"build.py: upload {digest}: HTTP {status}: {body[:300]!r}")
        print(f"build.py: pushed {digest} ({len(blob)} bytes)")
    status, headers, body = request(
        "PUT", f"{base}/v2/{repository}/manifests/{tag}", manifest_blob, {"Content-Type": OCI_MANIFEST}
    )
    if status != 201:
        sys.exit(f"build.py: put manifest: HTTP {status}: {body[:300]!r}")
    answered = headers.get("Docker-Content-Digest")
    if answered and answered != manifest_digest:
        sys.exit(f"build.py: the registry stored the manifest as {answered}, not {manifest_digest}")
    print(f"build.py: pushed {ref}@{manifest_digest}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crius", default=str(REPO / "target/release/crius"), help="the crius binary to ship")
    parser.add_argument("--busybox", default="/bin/busybox", help="a static busybox (Debian busybox-static)")
    parser.add_argument("--kubectl", help="a static kubectl (default: Debian's kubernetes-client, fetched once)")
    parser.add_argument("--out", default=str(REPO / "target/installer-image"), help="OCI image layout directory")
    parser.add_argument("--version", help="image version label (default: the workspace version)")
    parser.add_argument("--level", type=int, default=9, help="gzip level (default 9)")
    parser.add_argument("--push", metavar="HOST/REPOSITORY:TAG", help="push to this registry reference")
    args = parser.parse_args()
    if not Path(args.crius).is_file():
        sys.exit(f"build.py: no crius binary at {args.crius} (cargo build --release -p crius)")
    blobs, manifest_blob, manifest_digest, blob_digests = build(args)
    print(f"build.py: wrote {args.out}: manifest {manifest_digest}")
    if args.push:
        push(args.push, blobs, manifest_blob, manifest_digest, blob_digests)


if __name__ == "__main__":
    main()
