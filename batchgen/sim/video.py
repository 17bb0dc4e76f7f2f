"""Real, playable H.264 MP4 clips drawn from the prompt, small enough to be quick.

The frame is tiny (the short side 36 px) but has exactly the asked aspect ratio;
the clip lasts the asked duration at a low frame rate. Colours, stripe width,
direction and speed come from a hash of the prompt, so two prompts give visibly
different clips, and one prompt always gives the same bytes (one encoder thread),
which keeps the ETag stable even after the cache forgot the clip.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from collections import OrderedDict
from dataclasses import dataclass

import av

FPS = 4
SHORT_SIDE = 36


def frame_size(aspect_ratio: str) -> tuple[int, int]:
    """Smallest even width x height with exactly ``aspect_ratio`` and a short side >= 36."""
    a, b = (int(x) for x in aspect_ratio.split(":"))
    g = math.gcd(a, b)
    a, b = a // g, b // g
    k = math.ceil(SHORT_SIDE / min(a, b))
    while (a * k) % 2 or (b * k) % 2:
        k += 1
    return a * k, b * k


@dataclass(frozen=True)
class Clip:
    data: bytes
    etag: str
    width: int
    height: int


def render(prompt: str, aspect_ratio: str, duration_s: float) -> Clip:
    """Encode the clip for one prompt (a few milliseconds)."""
    width, height = frame_size(aspect_ratio)
    h = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    base, amp = 40 + h[0] % 100, 60 + h[1] % 80
    period = 4 + h[2] % 12  # stripe width in pixels
    slope = 1 + h[3] % 3  # stripe direction
    speed = 1 + h[4] % 4  # pixels per frame
    u_plane, v_plane = h[5], h[6]
    frames = max(1, round(FPS * duration_s))
    # one long stripe pattern; every row of every frame is a slice of it
    span = width + slope * height + speed * frames + 1
    pattern = bytes(min(255, base + (amp if (i // period) % 2 else 0)) for i in range(span))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
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


class ClipCache:
    """Clips by (prompt, aspect ratio, duration): bounded LRU, each encoded once.

    Encoding runs in a thread so the server keeps answering; concurrent requests
    for a clip not yet made wait for the same encoding.
    """

    def __init__(self, max_clips: int = 256) -> None:
        self.max_clips = max_clips
        self._clips: OrderedDict[tuple[str, str, float], Clip] = OrderedDict()
        self._making: dict[tuple[str, str, float], asyncio.Future[Clip]] = {}
        self.encoded = 0

    async def get(self, prompt: str, aspect_ratio: str, duration_s: float) -> Clip:
        key = (prompt, aspect_ratio, duration_s)
        clip = self._clips.get(key)
        if clip is not None:
            self._clips.move_to_end(key)
            return clip
        making = self._making.get(key)
        if making is None:
            # A task of its own: a client that hangs up does not cancel it for others.
            making = asyncio.ensure_future(
                asyncio.to_thread(render, prompt, aspect_ratio, duration_s)
            )
            self._making[key] = making
            making.add_done_callback(lambda task: self._done(key, task))
        return await asyncio.shield(making)

    def _done(self, key: tuple[str, str, float], task: asyncio.Future[Clip]) -> None:
        del self._making[key]
        if task.cancelled() or task.exception() is not None:
            return
        self.encoded += 1
        self._clips[key] = task.result()
        while len(self._clips) > self.max_clips:
            self._clips.popitem(last=False)
