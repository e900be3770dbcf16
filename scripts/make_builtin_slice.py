"""Make the built-in slice (core/data/assets/cifar10-slice.tar.gz) from the CIFAR-10 JPEG copy.

Takes the first N train and M test files of each class, by sorted file name, and copies their JPEG
bytes unchanged into a new archive of the same train/<class>/, test/<class>/ layout. The output
depends only on the source: members are sorted, owners blanked and the gzip header carries no
time, so running it twice gives the same bytes.

    .venv/bin/python -m scripts.make_builtin_slice ../shared/cifar10/cifar10-jpg.tar.gz \\
        core/data/assets/cifar10-slice.tar.gz --train 500 --test 100
"""
from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from collections import defaultdict
from pathlib import PurePosixPath


def read_class_folders(source: str) -> dict[tuple[str, str], dict[str, tuple[tarfile.TarInfo, bytes]]]:
    """{(split, class): {file name: (member, bytes)}} for every split/class/file in the archive."""
    files = defaultdict(dict)
    with tarfile.open(source, "r|*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.isreg() and len(parts) == 3 and parts[0] in ("train", "test"):
                files[parts[0], parts[1]][parts[2]] = (member, tar.extractfile(member).read())
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the JPEG copy: a .tar.gz of train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("destination", help="the slice to write, a .tar.gz")
    parser.add_argument("--train", type=int, default=500, help="train images per class (default 500)")
    parser.add_argument("--test", type=int, default=100, help="test images per class (default 100)")
    args = parser.parse_args()

    files = read_class_folders(args.source)
    per_split = {"train": args.train, "test": args.test}
    written = {"train": 0, "test": 0}
    with open(args.destination, "wb") as out, \
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for (split, cls), members in sorted(files.items()):
            names = sorted(members)[:per_split[split]]
            if len(names) < per_split[split]:
                raise SystemExit(f"{args.source}: {split}/{cls} has {len(names)} files, fewer than {per_split[split]}")
            for name in names:
                member, data = members[name]
                info = tarfile.TarInfo(f"{split}/{cls}/{name}")
                info.size, info.mtime, info.mode = len(data), member.mtime, 0o644
                tar.addfile(info, io.BytesIO(data))
                written[split] += 1
    print(f"wrote {args.destination}: {written['train']} train and {written['test']} test images")


if __name__ == "__main__":
    main()
