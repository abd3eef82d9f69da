#!/usr/bin/env python3
"""Extracts the uncompressed ELF vmlinux from an x86 bzImage, for QEMU's PVH boot.

Usage: extract_vmlinux.py BZIMAGE OUT

The bzImage's setup header (Linux x86 boot protocol >= 2.08) gives where the compressed kernel
starts (payload_offset, from the 32-bit code that follows the setup sectors) and how long it
is (payload_length). The build appends the uncompressed size as a little-endian u32 to the
compressed stream; it is checked against what comes out. The compression is told by its magic.
Exits non-zero, saying why, if the file is no bzImage or the result is not an ELF image.
"""

import bz2
import lzma
import struct
import subprocess
import sys
import zlib


def decompress(data: bytes) -> bytes:
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if data.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if data.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(data)
    # No decoder for these in the standard library: the Debian tools, if present.
    for magic, tool in ((b"\x28\xb5\x2f\xfd", ["zstd", "-qdc"]),
                        (b"\x02\x21\x4c\x18", ["lz4", "-qdc"]),
                        (b"\x89LZO", ["lzop", "-qdc"])):
        if data.startswith(magic):
            return subprocess.run(tool, input=data, stdout=subprocess.PIPE, check=True).stdout
    raise SystemExit(f"unknown compression, magic {data[:6].hex()}")


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    image = open(sys.argv[1], "rb").read()
    if image[0x202:0x206] != b"HdrS":
        raise SystemExit(f"{sys.argv[1]}: no Linux boot header")
    (protocol,) = struct.unpack_from("<H", image, 0x206)
    if protocol < 0x208:
        raise SystemExit(f"{sys.argv[1]}: boot protocol {protocol:#x} has no payload fields")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start:start + payload_length]
    (size,) = struct.unpack("<I", payload[-4:])
    vmlinux = decompress(payload[:-4])
    if not vmlinux.startswith(b"\x7fELF"):
        raise SystemExit("decompressed payload is not an ELF image")
    if len(vmlinux) != size:
        raise SystemExit(f"decompressed {len(vmlinux)} bytes, the image says {size}")
    with open(sys.argv[2], "wb") as out:
        out.write(vmlinux)


if __name__ == "__main__":
    main()
