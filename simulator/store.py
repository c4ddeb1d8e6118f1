"""Serialised Longhorn lists of one cluster, paged the way kube-apiserver pages them.

One simulator process serves every cluster of the fleet, so serving must cost next to
nothing: each object is encoded to JSON once when the store is built (the dicts are then
dropped), and each page body is assembled from those bytes on first use and cached, together
with its gzip form. Like kube-apiserver, bodies above 128 KiB are gzipped for clients that
accept it (level 1), and list keys come out in Go's sorted-map order
(apiVersion, items, kind, metadata).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass

import msgspec

from .objects import API_VERSION, KINDS, ClusterObjects

# kube-apiserver compresses responses above this size (responsewriters.defaultGzipThresholdBytes).
GZIP_MIN_BYTES = 128 * 1024

_encoder = msgspec.json.Encoder()


class ContinueError(ValueError):
    """A continue token that is not one of ours (kube-apiserver answers 400)."""


def gzip_bytes(body: bytes) -> bytes:
    """gzip at level 1, as kube-apiserver does: cheap to make, still ~10x smaller here."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def encode_continue(resource_version: int, start: int) -> str:
    """An opaque continue token (shaped like kube-apiserver's: base64 of a small JSON)."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": start})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_continue(token: str) -> tuple[int, int]:
    """(resourceVersion, start index) from a token made by `encode_continue`."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        rv, start = data["rv"], data["start"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise ContinueError("continue key is not valid: malformed token") from exc
    if data.get("v") != "meta.k8s.io/v1" or not isinstance(rv, int) or not isinstance(start, int):
        raise ContinueError("continue key is not valid: incorrect encoded start resourceVersion")
    if start < 0:
        raise ContinueError("continue key is not valid: negative start")
    return rv, start


@dataclass(frozen=True)
class Page:
    """One response body (gzip-encoded when `gzipped`), its item count and where the next
    page starts (None on the last page)."""

    body: bytes
    gzipped: bool
    items: int
    next_start: int | None
    json_bytes: int  # the body's size before gzip: what an API server has to encode


def _page(body: bytes, accept_gzip: bool, items: int, next_start: int | None) -> Page:
    if accept_gzip and len(body) > GZIP_MIN_BYTES:
        return Page(gzip_bytes(body), True, items, next_start, len(body))
    return Page(body, False, items, next_start, len(body))


class ClusterStore:
    """The encoded objects of one generation of a cluster, and its page cache."""

    def __init__(
        self,
        objects: ClusterObjects,
        resource_version: int | None = None,
        metadata_first: bool = False,
    ) -> None:
        self.resource_version = resource_version or objects.resource_version
        self.metadata_first = metadata_first
        self.summary = objects.summary
        self.malformed = list(objects.malformed)
        self.items: dict[str, list[bytes]] = {
            plural: [_encoder.encode(obj) for obj in objs] for plural, objs in objects.items.items()
        }
        self._pages: dict[tuple[str, int, int, bool], Page] = {}

    def count(self, plural: str) -> int:
        return len(self.items[plural])

    def page(self, plural: str, start: int, limit: int, accept_gzip: bool = False) -> Page:
        """Items [start, start+limit) of `plural` (all from `start` when limit <= 0).

        Cached per (range, gzip): a big page served to gzip clients is kept compressed only.
        """
        items = self.items[plural]
        total = len(items)
        end = total if limit <= 0 else min(total, start + limit)
        key = (plural, start, end, accept_gzip)
        page = self._pages.get(key)
        if page is None:
            next_start = end if end < total else None
            body = self._body(plural, items[start:end], next_start, total - end)
            page = _page(body, accept_gzip, max(0, end - start), next_start)
            self._pages[key] = page
        return page

    def endless_page(self, plural: str, start: int, limit: int, accept_gzip: bool = False) -> Page:
        """A page that always claims more items follow, with a new token each time (the
        `endless_continue` fault). It cycles through the real items; never cached."""
        items = self.items[plural]
        size = limit if limit > 0 else len(items)
        first = start % len(items) if items else 0
        chunk = items[first : first + size]
        next_start = start + max(1, len(chunk))
        body = self._body(plural, chunk, next_start, len(items) or 1)
        return _page(body, accept_gzip, len(chunk), next_start)

    def empty_list(self, plural: str) -> bytes:
        """What kube-apiserver answers for a namespace holding none of these objects."""
        return self._body(plural, [], None, 0)

    def _body(
        self, plural: str, chunk: list[bytes], next_start: int | None, remaining: int
    ) -> bytes:
        meta: dict[str, object] = {"resourceVersion": str(self.resource_version)}
        if next_start is not None:
            meta = {
                "continue": encode_continue(self.resource_version, next_start),
                "remainingItemCount": remaining,
                "resourceVersion": str(self.resource_version),
            }
        kind = b'"kind":"' + KINDS[plural].encode() + b'List"'
        items = b'"items":[' + b",".join(chunk) + b"]"
        metadata = b'"metadata":' + _encoder.encode(meta)
        head = b'{"apiVersion":"' + API_VERSION.encode() + b'",'
        if self.metadata_first:
            return b"".join((head, kind, b",", metadata, b",", items, b"}"))
        return b"".join((head, items, b",", kind, b",", metadata, b"}"))
