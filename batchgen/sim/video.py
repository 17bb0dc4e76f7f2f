"""Real, playable H.264 MP4 clips drawn from the prompt, at the asked size.

The frame has the pixel size the asked resolution and aspect ratio stand for
(``batchgen.files.media.frame_size``: 1280x720 for 720p 16:9, 1080x1920 for 1080p 9:16);
the clip lasts the asked duration at one frame per second and a low bitrate, so
even 10 s at 1080p encodes in tens of milliseconds and weighs a few hundred kB.
``tiny`` clips (``SimConfig.tiny_videos``, for fast tests) keep the aspect ratio on
a 36-pixel short side at 4 frames per second. Colours, stripe width, direction and
speed come from a hash of the prompt, so two prompts give visibly different clips,
and one prompt always gives the same bytes (one encoder thread), which keeps the
ETag stable even after the cache forgot the clip.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from collections import OrderedDict
from dataclasses import dataclass

import av

from batchgen.files.media import frame_size as asked_size

FPS = 1
TINY_FPS = 4
TINY_SHORT_SIDE = 36
#: when the resolution is not one the convention knows (never for this model)
FALLBACK_RESOLUTION = "1080p"


def frame_size(aspect_ratio: str, resolution: str, *, tiny: bool = False) -> tuple[int, int]:
    """Width x height of the clip for this aspect ratio and resolution.

    ``tiny``: the smallest even size with exactly ``aspect_ratio`` and a short side >= 36.
    """
    if not tiny:
        size = asked_size(aspect_ratio, resolution) or asked_size(aspect_ratio, FALLBACK_RESOLUTION)
        if size is None:
            raise ValueError(f"aspect ratio {aspect_ratio!r} not understood")
        return size
    a, b = (int(x) for x in aspect_ratio.split(":"))
    g = math.gcd(a, b)
    a, b = a // g, b // g
    k = math.ceil(TINY_SHORT_SIDE / min(a, b))
    while (a * k) % 2 or (b * k) % 2:
        k += 1
    return a * k, b * k


@dataclass(frozen=True)
class Clip:
    data: bytes
    etag: str
    width: int
    height: int


def render(prompt: str, width: int, height: int, duration_s: float, fps: int = FPS) -> Clip:
    """Encode the clip for one prompt (milliseconds tiny, tens of milliseconds at 1080p)."""
    h = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    # the picture looks the same at every size: stripes and motion scale with the frame
    scale = max(1, min(width, height) // TINY_SHORT_SIDE)
    base, amp = 40 + h[0] % 100, 60 + h[1] % 80
    period = (4 + h[2] % 12) * scale  # stripe width in pixels
    slope = 1 + h[3] % 3  # stripe direction
    speed = (1 + h[4] % 4) * scale * TINY_FPS // fps  # pixels per frame
    u_plane, v_plane = h[5], h[6]
    frames = max(1, round(fps * duration_s))
    # one long stripe pattern; every row of every frame is a slice of it
    span = width + slope * height + speed * frames + 1
    pattern = bytes(min(255, base + (amp if (i // period) % 2 else 0)) for i in range(span))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        # crf 40: a low bitrate is all a stand-in needs, and it keeps files small
        options = {"preset": "ultrafast", "crf": "40"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # the same bytes every time
        for t in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            y, u, v = frame.planes
            pad = b"\0" * (y.line_size - width)
            rows = (pattern[t * speed + r * slope :][:width] + pad for r in range(height))
            y.update(b"".join(rows))
            u.update(bytes([u_plane]) * u.buffer_size)
            v.update(bytes([v_plane]) * v.buffer_size)
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buf.getvalue()
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    return Clip(data, etag, width, height)


_Key = tuple[str, int, int, float, int]


class ClipCache:
    """Clips by (prompt, width, height, duration, frame rate): bounded LRU, each encoded once.

    Bounded in count and in bytes (a 1080p clip is a few hundred kB). Encoding runs in
    a thread so the server keeps answering; concurrent requests for a clip not yet
    made wait for the same encoding.
    """

    def __init__(self, max_clips: int = 256, max_bytes: int = 64 << 20) -> None:
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self._clips: OrderedDict[_Key, Clip] = OrderedDict()
        self._making: dict[_Key, asyncio.Future[Clip]] = {}
        self._bytes = 0
        self.encoded = 0

    async def get(
        self, prompt: str, aspect_ratio: str, resolution: str, duration_s: float, *, tiny: bool
    ) -> Clip:
        width, height = frame_size(aspect_ratio, resolution, tiny=tiny)
        fps = TINY_FPS if tiny else FPS
        key = (prompt, width, height, duration_s, fps)
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
            return clip
        making = self._making.get(key)
        if making is None:
            # A task of its own: a client that hangs up does not cancel it for others.
            making = asyncio.ensure_future(
                asyncio.to_thread(render, prompt, width, height, duration_s, fps)
            )
            self._making[key] = making
            making.add_done_callback(lambda task: self._done(key, task))
        return await asyncio.shield(making)

    def _done(self, key: _Key, task: asyncio.Future[Clip]) -> None:
        del self._making[key]
        if task.cancelled() or task.exception() is not None:
            return
        self.encoded += 1
        clip = task.result()
        self._clips[key] = clip
        self._bytes += len(clip.data)
        while len(self._clips) > self.max_clips or (
            self._bytes > self.max_bytes and len(self._clips) > 1
        ):
            _, dropped = self._clips.popitem(last=False)
            self._bytes -= len(dropped.data)
