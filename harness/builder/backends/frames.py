"""Frames at 0.5 fps: decoders (decord, PyAV) and the on-disk frame store.

Frame i of a video is the frame shown at the middle of its 2-s clip [2i, 2i+2), i.e. at
2i+1 s (the last, partial clip: the middle of the part that exists), so frame i lines up
with QVHighlights' clip i and with caption i of the imported caption sets. The number of
frames is the dataset's `n_clips(duration)` when the builder passes it (so that every
stage's per-frame lists have the annotation's length), else the file's own clip count.

Decoding a 150-s video takes seconds and three stages need its frames, so the builder's
`frames` stage decodes each video once into a frame store: one zip per video holding the
frames as JPEG (quality 95) and a `frames.json` manifest. Every later stage reads frames
through the store (decoding and storing on demand when the `frames` stage did not run), so
all stages always see exactly the same pixels whatever order they ran in.

A video is looked up as `<videos>/<vid>.<ext>` for ext in `VIDEO_EXTENSIONS`. A missing or
undecodable video raises `VideoError` naming the id and the file; the builder reports it
and goes on with the other videos.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.builder.backends.base import FrameDecoder, Frames, VideoError, frame_times
from harness.core.constants import FPS
from harness.core.io import atomic_write_bytes
from harness.core.query import n_clips
from harness.core.registries import DECODERS

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
JPEG_QUALITY = 95


def find_video(videos: str | os.PathLike[str], vid: str) -> Path:
    """`<videos>/<vid>.mp4` (or .mkv/.webm/.avi); `VideoError` names what was looked for."""
    folder = Path(videos)
    for ext in VIDEO_EXTENSIONS:
        path = folder / f"{vid}{ext}"
        if path.is_file():
            return path
    exts = "/".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
    raise VideoError(vid, f"missing: no {vid}.{{{exts}}} in {folder}")


def _clamped(n: int, duration: float, fps: float) -> int:
    return sum(1 for i in range(n) if i / fps >= duration)


@DECODERS.register("decord")
class DecordDecoder(FrameDecoder):
    """decord's `VideoReader`: random access by frame index (the paper's decoder).

    Frame index for time t is floor(t * avg_fps), the frame on screen at t. Frames are
    decoded at the target size (decord scales in FFmpeg while decoding) and read
    `chunk` at a time: a 1080p ActivityNet video at 0.5 fps is some 2 GB of native
    frames, which one `get_batch` would hold at once.
    """

    name = "decord"

    def __init__(self, fps: float = FPS, max_side: int | None = 640, num_threads: int = 0,
                 chunk: int = 16, **kw: Any) -> None:
        super().__init__(fps=fps, max_side=max_side, **kw)
        self.num_threads = int(num_threads)
        self.chunk = max(1, int(chunk))

    def _reader(self, decord: Any, path: str) -> Any:
        """A reader that decodes at the target size (native when it is small enough).

        decord's scaler refuses some sizes (its copy fails for widths under ~50); then the
        native reader is kept and each chunk is resized after decoding."""
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.num_threads)
        if self.max_side is None or len(vr) == 0:
            return vr
        h, w = vr[0].shape[:2]
        target = self.target_size(w, h)
        if target == (w, h):
            return vr
        try:
            scaled = decord.VideoReader(str(path), ctx=decord.cpu(0), width=target[0],
                                        height=target[1], num_threads=self.num_threads)
            if scaled.get_batch([0]).shape[1:3] == (target[1], target[0]):
                return scaled
        except Exception:  # decord's DECORDError: keep the native reader
            pass
        return vr

    def decode(self, path: str, vid: str, n_frames: int | None = None) -> Frames:
        try:
            import decord  # lazy: optional video decoder (decord)
        except ImportError as e:  # pragma: no cover - platform without decord wheels
            raise VideoError(vid, f"decord is not installed ({e}); use the pyav decoder", path) from None
        try:
            vr = self._reader(decord, path)
            total = len(vr)
            native = float(vr.get_avg_fps())
            if total <= 0 or not native > 0:
                raise ValueError(f"{total} frames at {native} fps")
            duration = total / native
            n = n_frames if n_frames is not None else n_clips(duration)
            times = frame_times(n, duration, self.fps)
            idx = [min(total - 1, max(0, math.floor(t * native + 1e-6))) for t in times]
            images = []
            for s in range(0, len(idx), self.chunk):
                batch = vr.get_batch(idx[s : s + self.chunk]).asnumpy()
                images.extend(self._resize(img) for img in batch)
                del batch
        except VideoError:
            raise
        except Exception as e:  # decord raises its own DECORDError and plain RuntimeErrors
            raise VideoError(vid, f"undecodable by decord: {type(e).__name__}: {e}", str(path)) from None
        return Frames(vid, images, times, duration, self.name, str(path),
                      _clamped(n, duration, self.fps), {"native_fps": native, "native_frames": total})


@DECODERS.register("pyav")
class PyAVDecoder(FrameDecoder):
    """PyAV (FFmpeg) fallback: seeks to the keyframe before each time, decodes forward.

    For files decord cannot open (some codecs, broken indexes) and platforms without decord
    wheels. Picks the last frame whose presentation time is <= t, as decord's index rule does.
    """

    name = "pyav"

    def decode(self, path: str, vid: str, n_frames: int | None = None) -> Frames:
        try:
            import av  # lazy: optional video decoder (PyAV)
        except ImportError as e:  # pragma: no cover
            raise VideoError(vid, f"PyAV is not installed ({e})", path) from None
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError("no video stream")
                stream = container.streams.video[0]
                duration = self._duration(container, stream)
                n = n_frames if n_frames is not None else n_clips(duration)
                times = frame_times(n, duration, self.fps)
                images = []
                last: np.ndarray | None = None
                for t in times:
                    img = self._frame_at(container, stream, t)
                    if img is None:
                        if last is None:
                            raise ValueError(f"no frame decodable at or before {t:.2f} s")
                        img = last
                    last = img
                    images.append(self._resize(img))
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(vid, f"undecodable by PyAV: {type(e).__name__}: {e}", str(path)) from None
        return Frames(vid, images, times, duration, self.name, str(path),
                      _clamped(n, duration, self.fps))

    @staticmethod
    def _duration(container: Any, stream: Any) -> float:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1_000_000.0
        raise ValueError("unknown duration")

    @staticmethod
    def _frame_at(container: Any, stream: Any, t: float) -> np.ndarray | None:
        tb = float(stream.time_base)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        target = start + t
        container.seek(max(0, int((target - 1e-3) / tb)), stream=stream, backward=True,
                       any_frame=False)
        best = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            ft = frame.pts * tb
            if ft <= target + 1e-6 or best is None:
                best = frame
            if ft > target + 1e-6:
                break
        return None if best is None else best.to_ndarray(format="rgb24")


# -- frame store ----------------------------------------------------------------------------
class FrameStore:
    """One zip of JPEG frames per video under `root/<family>/fps<fps>-max<max_side>/`.

    Written to a temporary name and renamed, so a crash never leaves half a video; an
    existing zip is what "already done" means for the `frames` stage.
    """

    def __init__(self, root: str | os.PathLike[str], fps: float = FPS, max_side: int | None = 640) -> None:
        self.root = Path(root)
        self.tag = f"fps{fps:g}-max{max_side or 'native'}"

    def path(self, family: str, vid: str) -> Path:
        return self.root / family / self.tag / f"{vid}.zip"

    def has(self, family: str, vid: str) -> bool:
        return self.path(family, vid).is_file()

    def write(self, family: str, frames: Frames) -> Frames:
        """Store `frames` and return them as stored (JPEG round-trip), as readers see them."""
        from PIL import Image  # lazy: image library, needed only with frames (Pillow)

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for i, img in enumerate(frames.images):
                jb = io.BytesIO()
                Image.fromarray(img).save(jb, format="JPEG", quality=JPEG_QUALITY)
                z.writestr(f"{i:06d}.jpg", jb.getvalue())
            manifest = {
                "vid": frames.vid, "n_frames": len(frames), "timestamps": frames.timestamps,
                "video_duration": frames.video_duration, "decoder": frames.decoder,
                "source": os.path.basename(frames.source), "clamped": frames.clamped,
                "meta": frames.meta, "jpeg_quality": JPEG_QUALITY,
            }
            z.writestr("frames.json", json.dumps(manifest, sort_keys=True))
        atomic_write_bytes(self.path(family, frames.vid), buf.getvalue())
        return self._read_zip(io.BytesIO(buf.getvalue()), frames.vid)

    def read(self, family: str, vid: str) -> Frames:
        path = self.path(family, vid)
        try:
            with open(path, "rb") as f:
                return self._read_zip(f, vid)
        except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
            raise VideoError(vid, f"unreadable frame store entry: {e}", str(path)) from None

    @staticmethod
    def _read_zip(fileobj: Any, vid: str) -> Frames:
        from PIL import Image  # lazy: image library, needed only with frames (Pillow)

        with zipfile.ZipFile(fileobj) as z:
            m = json.loads(z.read("frames.json"))
            images = [
                np.asarray(Image.open(io.BytesIO(z.read(f"{i:06d}.jpg"))).convert("RGB"))
                for i in range(int(m["n_frames"]))
            ]
        return Frames(vid, images, list(m["timestamps"]), float(m["video_duration"]),
                      m["decoder"], m.get("source", ""), int(m.get("clamped", 0)), dict(m.get("meta", {})))


class FrameSource:
    """Frames of a dataset's videos for the builder: store first, else decode (and store).

    `decoder` is tried first, then `fallback` (if any) when the first cannot decode a file.
    Errors are `VideoError`s naming the video; the caller reports and skips them.
    """

    def __init__(
        self,
        videos: str | os.PathLike[str] | None,
        store: FrameStore,
        family: str,
        decoder: FrameDecoder,
        fallback: FrameDecoder | None = None,
    ) -> None:
        self.videos = Path(videos) if videos is not None else None
        self.store = store
        self.family = family
        self.decoder = decoder
        self.fallback = fallback

    def has(self, vid: str) -> bool:
        return self.store.has(self.family, vid)

    def get(self, vid: str, n_frames: int | None) -> Frames:
        if self.store.has(self.family, vid):
            frames = self.store.read(self.family, vid)
            if n_frames is None or len(frames) == n_frames:
                return frames
        return self.store.write(self.family, self.decode(vid, n_frames))

    def decode(self, vid: str, n_frames: int | None) -> Frames:
        if self.videos is None:
            raise VideoError(vid, "no frames stored and no --videos folder to decode from")
        path = find_video(self.videos, vid)
        try:
            return self.decoder.decode(str(path), vid, n_frames)
        except VideoError as first:
            if self.fallback is None:
                raise
            try:
                frames = self.fallback.decode(str(path), vid, n_frames)
            except VideoError as second:
                raise VideoError(vid, f"{first.reason}; {second.reason}", str(path)) from None
            frames.meta["fallback_from"] = f"{self.decoder.name}: {first.reason}"
            return frames
