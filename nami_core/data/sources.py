"""Where training images and captions come from.

* a folder of images with same-stem `.txt` captions (or `.json` with a `caption` field);
* a Hugging Face `datasets` folder written by `save_to_disk`, or parquet files, with image and text columns;
* webdataset `.tar` shards, given as a path or brace pattern (`data/{00000..00099}.tar`).

Every source yields `SourceItem`s in a fixed order, so a re-run sees the same items in the
same work units and can skip the finished ones without decoding them. `Source.fingerprint()`
sums up the listing (item count and a hash of names and sizes) so that a re-run can tell when
the source changed under a half-prepared folder.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import NamiError, first_line
from ..user_files import parse_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp", "jpeg")
CAPTION_COLUMNS = ("caption", "text", "prompt", "txt", "captions")


@dataclass
class SourceItem:
    """One training example. `load()` returns encoded bytes, a path or a PIL image; decoding happens later."""

    key: str
    load: Callable[[], Any]
    caption: str | None


class Source:
    """An ordered collection of `SourceItem`s; `len` is None when unknown in advance (streams)."""

    name = "source"

    def __iter__(self) -> Iterator[SourceItem]:  # pragma: no cover - interface
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - interface
        raise TypeError("length unknown")

    def describe(self) -> str:
        return self.name

    def input_paths(self) -> list[Path]:
        """The files and folders the items are read from (none for generated sources): the
        prepared folder may not be, hold or lie inside any of them."""
        return []

    def fingerprint(self) -> dict:
        """The listing in short: `items` (None when unknown) and a `sha256` that changes when
        items are added, removed, renamed or resized. By default, a hash of `describe()`."""
        return listing_fingerprint(_length(self), [self.describe()])


def _length(source: Source) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


def listing_fingerprint(items: int | None, entries: list[str]) -> dict:
    """`{"items": items, "sha256": hash of the entries, one a line}`."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.encode("utf-8", errors="surrogateescape") + b"\n")
    return {"items": items, "sha256": digest.hexdigest()}


def files_listing(files: list[Path], root: Path | None = None) -> list[str]:
    """`NAME SIZE` for each file (names relative to `root` when given), as a fingerprint's entries."""
    entries = []
    for path in files:
        name = path.relative_to(root) if root is not None else path.name
        entries.append(f"{name}\t{path.stat().st_size}")
    return entries


def refuse_columns(image_column: str | None, caption_column: str | None, what: str) -> None:
    """Refuse --image-column / --caption-column for a source without columns (`what` names it)."""
    for flag, value in (("--image-column", image_column), ("--caption-column", caption_column)):
        if value is not None:
            raise NamiError(f"{flag} applies to datasets and parquet sources only, not to {what}")


def _caption_for(image: Path) -> str | None:
    txt = image.with_suffix(".txt")
    if txt.is_file():  # utf-8-sig: a byte-order mark is not part of the caption
        return txt.read_text(encoding="utf-8-sig", errors="replace").strip()
    meta = image.with_suffix(".json")
    if meta.is_file():
        try:
            data = parse_json(meta.read_text(encoding="utf-8-sig"), str(meta))
        except (NamiError, UnicodeDecodeError):
            return None
        caption = data.get("caption") if isinstance(data, dict) else None
        return str(caption).strip() if caption is not None else None
    return None


class FolderSource(Source):
    name = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise NamiError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[SourceItem]:
        for path in self.files:
            yield SourceItem(str(path.relative_to(self.root)), lambda p=path: str(p), _caption_for(path))

    def describe(self) -> str:
        return f"folder {self.root} ({len(self.files)} images)"

    def input_paths(self) -> list[Path]:
        return [self.root]

    def fingerprint(self) -> dict:
        return listing_fingerprint(len(self.files), files_listing(self.files, self.root))


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise NamiError(f"{what} column {wanted!r} not found; columns are {', '.join(columns)}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise NamiError(
        f"no {what} column among {', '.join(columns)}; pass --{what}-column"
    )


class TableSource(Source):
    """Rows of a `datasets.Dataset` (from `save_to_disk` or parquet files)."""

    name = "datasets"

    def __init__(self, dataset, label: str, image_column: str | None, caption_column: str | None,
                 files: list[Path] | None = None) -> None:
        """`files`: the files the rows come from (parquet files, a datasets folder's files), for
        the fingerprint."""
        import datasets

        columns = list(dataset.column_names)
        self.image_column = _pick_column(columns, image_column, IMAGE_COLUMNS, "image")
        self.caption_column = _pick_column(columns, caption_column, CAPTION_COLUMNS, "caption")
        feature = dataset.features.get(self.image_column)
        if isinstance(feature, datasets.Image):
            # Decode ourselves, so one corrupt image is a skip and not a crash.
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.dataset = dataset
        self.label = label
        self.files = files

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[SourceItem]:
        for i in range(len(self.dataset)):
            yield SourceItem(str(i), lambda i=i: self._image(i), self._caption(i))

    def _caption(self, i: int) -> str | None:
        value = self.dataset[i][self.caption_column]
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return None if value is None else str(value).strip()

    def _image(self, i: int):
        value = self.dataset[i][self.image_column]
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return value["bytes"]
            if value.get("path"):
                return value["path"]
        return value

    def describe(self) -> str:
        return f"{self.label} ({len(self.dataset)} rows, image={self.image_column}, caption={self.caption_column})"

    def input_paths(self) -> list[Path]:
        return list(self.files or [])

    def fingerprint(self) -> dict:
        if self.files is None:
            return super().fingerprint()
        columns = [f"image={self.image_column}", f"caption={self.caption_column}"]
        return listing_fingerprint(len(self.dataset), columns + files_listing(self.files))


class WebDatasetSource(Source):
    """Samples of webdataset tar shards; images are the first of jpg/png/webp, captions txt or json."""

    name = "webdataset"

    def __init__(self, pattern: str) -> None:
        from braceexpand import braceexpand

        self.urls = [u for p in braceexpand(pattern) for u in (sorted(glob.glob(p)) or [p])]
        missing = [u for u in self.urls if not Path(u).is_file()]
        if missing:
            raise NamiError(f"webdataset shard {missing[0]} does not exist")
        for url in self.urls:
            check_tar(url)
        self.pattern = pattern

    def input_paths(self) -> list[Path]:
        return [Path(u) for u in self.urls]

    def __iter__(self) -> Iterator[SourceItem]:
        import tarfile

        import webdataset as wds

        dataset = wds.WebDataset(self.urls, shardshuffle=False, empty_check=False)
        try:
            yield from self._items(dataset)
        except (tarfile.TarError, OSError, EOFError) as exc:  # a shard damaged past its first header
            raise NamiError(f"a webdataset shard of {self.pattern} cannot be read to its end "
                            f"({type(exc).__name__}: {first_line(exc)})") from None

    def _items(self, dataset) -> Iterator[SourceItem]:
        for sample in dataset:
            key = f"{Path(str(sample.get('__url__', ''))).name}/{sample['__key__']}"
            image = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
            caption = None
            if "txt" in sample:
                caption = sample["txt"].decode("utf-8-sig", errors="replace").strip()
            elif "json" in sample:
                try:
                    meta = parse_json(sample["json"].decode("utf-8-sig"), key)
                    caption = meta.get("caption") if isinstance(meta, dict) else None
                except (NamiError, UnicodeDecodeError):
                    caption = None
            yield SourceItem(key, (lambda b=image: b) if image is not None else _missing_image, caption)

    def describe(self) -> str:
        return f"webdataset {self.pattern} ({len(self.urls)} shards)"

    def fingerprint(self) -> dict:
        return listing_fingerprint(None, [f"{url}\t{Path(url).stat().st_size}" for url in self.urls])


TAR_TAIL = 1 << 20  # bytes after a tar's last member that are read to tell its zero padding from garbage


def check_tar(url: str) -> None:
    """NamiError unless `url` is a whole tar file: its member headers read to the end, and only zero
    padding after the last one. (`tarfile` takes a damaged header after the first member for the
    end of the archive, so a damaged shard would otherwise lose its later samples without a word.)"""
    import tarfile

    try:
        with tarfile.open(url) as tar:
            members = len(tar.getmembers())
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError):
        raise NamiError(f"webdataset shard {url} is not a tar file (damaged, or another format)") from None
    with open(url, "rb") as f:
        f.seek(end)
        tail = f.read(TAR_TAIL)
    if tail.strip(b"\0"):
        raise NamiError(f"webdataset shard {url} is damaged after its member {members} (byte {end:,} of "
                        f"{Path(url).stat().st_size:,}): its later samples cannot be read")


def _missing_image():
    from .images import SkipImage

    raise SkipImage("no image in sample")


def open_source(spec: str, image_column: str | None = None, caption_column: str | None = None) -> Source:
    """Open SOURCE as given to `nami prepare-data` (see module docstring)."""
    if not spec.strip():
        raise NamiError("the source is empty; give an image folder, datasets folder, parquet file(s), "
                        "webdataset .tar pattern or 'shapes'")
    if ".tar" in spec:
        refuse_columns(image_column, caption_column, f"webdataset shards ({spec})")
        return WebDatasetSource(spec)
    path = Path(spec)
    if path.is_file() and path.suffix == ".parquet":
        return _parquet([str(path)], spec, image_column, caption_column)
    if "*" in spec and spec.endswith(".parquet"):
        files = sorted(glob.glob(spec))
        if not files:
            raise NamiError(f"no parquet files match {spec}")
        return _parquet(files, spec, image_column, caption_column)
    if not path.exists():
        raise NamiError(f"source {spec} does not exist")
    if not path.is_dir():
        raise NamiError(f"source {spec} is not a folder, parquet file or .tar shard pattern")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise NamiError(f"cannot read the datasets folder {path}: {str(exc).splitlines()[0]}") from None
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return TableSource(ds, f"datasets {path}", image_column, caption_column, files)
    parquet = sorted(str(p) for p in path.glob("*.parquet"))
    if parquet and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return _parquet(parquet, str(path), image_column, caption_column)
    refuse_columns(image_column, caption_column, f"the image folder {spec}")
    return FolderSource(path)


def _parquet(files: list[str], label: str, image_column, caption_column) -> TableSource:
    import datasets

    for file in files:
        _check_parquet(file)
    try:
        ds = datasets.Dataset.from_parquet(files)
    except (ValueError, OSError) as exc:  # pyarrow's errors are ValueErrors or OSErrors
        raise NamiError(f"cannot read the parquet source {label}: {first_line(exc)}") from None
    return TableSource(ds, f"parquet {label}", image_column, caption_column, [Path(f) for f in files])


def _check_parquet(file: str) -> None:
    """Refuse a file that is not parquet (a garbage or truncated file) by its footer, naming it."""
    import pyarrow.parquet as pq

    try:
        pq.read_schema(file)
    except (ValueError, OSError) as exc:
        why = first_line(exc).split(". ")[0].rstrip(".")  # pyarrow: "Parquet magic bytes not found in footer. Either ..."
        raise NamiError(f"{file} is not a readable parquet file ({why})") from None
