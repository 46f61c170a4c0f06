"""BandEngine: one played piano bar in, the band's next bar out. No I/O, no threads.

The live daemon and the offline render both call `step`, so what is heard live is what render
and evaluation measure. Given the same seed, controls and inputs, the outputs are the same.
"""
from __future__ import annotations

import functools
import time
from typing import Mapping

import numpy as np
import torch

from models.bars import BAND, BAND_PITCHES, INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.controls import Controls, density_threshold
from models.fused import FusedBand, ModuleBand, compact_weights_fast, int8_fits
from models.chords import HARMONY_KEY
from models.harmony import PITCH_CLASS, KeyTracker
from models.limits import MAX_NOTES_PER_BAR, cap_notes_in_place
from models.networks import N_FEATURES, BandModel, piano_features_numpy
from models.style import StyleBank, sample_style

DEFAULT_DYNAMICS = 90 / 127  # velocity used before the pianist has played anything
PITCHED = np.array([name != "drums" for name in INSTRUMENTS])  # (5,): parts that lose blips and follow the key
RETRIES = (0.5, 0.25)  # an empty part is retried at half, then a quarter of its threshold


def drop_blips(on: np.ndarray) -> np.ndarray:
    """Remove one-step (32nd) notes from a (..., 32, 128) pitched part: the blurred decoder scatters
    them, the data has almost none (QN ~0.95), and they sound like a stutter."""
    held = np.zeros_like(on)
    held[..., 1:, :] |= on[..., :-1, :]  # the step before is on
    held[..., :-1, :] |= on[..., 1:, :]  # the step after is on
    return on & held


def active_cells(decoded: np.ndarray, thresholds: np.ndarray, pitched: np.ndarray) -> np.ndarray:
    """(n, 32, 128) decoder output, (n,) thresholds, (n,) pitched? -> (n, 32, 128) bool cells to play,
    all inside BAND_PITCHES (whatever a system's decoder gives outside)."""
    on = decoded > thresholds[:, None, None]
    on[..., :BAND_PITCHES.start] = False
    on[..., BAND_PITCHES.stop:] = False
    held = np.zeros_like(on)
    held[:, 1:] = on[:, :-1]
    held[:, :-1] |= on[:, 1:]
    held |= ~pitched[:, None, None]  # drums keep their one-step hits
    return on & held


@functools.lru_cache(maxsize=None)
def _snap_masks(scale_bits: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a (12,) bool scale: float 0/1 masks of (128,) the pitches kept, (127,) the pitches
    1..127 that move a semitone down, (127,) the pitches 0..126 that move up."""
    scale = np.frombuffer(scale_bits, bool)
    outside = ~scale[PITCH_CLASS]
    down = outside & np.roll(scale, 1)[PITCH_CLASS]  # pitch - 1 is in the scale
    down[:BAND_PITCHES.start + 1] = False  # the lowest band pitch moves up: nothing leaves BAND_PITCHES
    up = outside & ~down
    up[BAND_PITCHES.stop - 1:] = False  # the highest has nowhere to go
    return (~outside).astype(np.float32), down[1:].astype(np.float32), up[:-1].astype(np.float32)


def snap_parts_to_scale(parts: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """models.harmony.snap_to_scale on (n, 32, 128) parts (silent outside BAND_PITCHES, as
    active_cells leaves them) at once, in place: an out-of-scale pitch
    moves a semitone down (up where down is out of scale too), the louder step wins (tested equal).
    Shifted slices times 0/1 masks rather than gathers by pitch index: a third of the time."""
    keep, moves_down, moves_up = _snap_masks(scale.tobytes())
    arriving_from_above = parts[..., 1:] * moves_down  # (n, 32, 127): lands on pitch p - 1
    arriving_from_below = parts[..., :-1] * moves_up  # lands on pitch p + 1
    parts *= keep
    np.maximum(parts[..., :-1], arriving_from_above, out=parts[..., :-1])  # a target hears at most one mover each way
    np.maximum(parts[..., 1:], arriving_from_below, out=parts[..., 1:])
    return parts


class BarEngine:
    """One played piano bar in, the band's next bar out: what every system behind `step` shares.

    A subclass brings the networks (`_decode_next`: decoder output in [0, 1] per cell) and its
    memory of earlier bars; this class does everything after the network, the same way for every
    system (thresholds and density, retries, velocities that follow the pianist, mutes, the note
    cap, key lock), so VAE-NN and the baselines (models.baselines) are compared on equal terms.
    `decode_piano`: whether `step` decodes the predicted piano (row 0) by default; a caller that
    needs it only now and then (echo, autopilot) passes False and asks `predicted_piano()`.
    Not thread-safe: one thread steps an engine.
    """

    def __init__(self, thresholds: list[float], styles: Mapping[str, StyleBank] | None = None,
                 device: str | torch.device = "cpu", controls: Controls | None = None,
                 decode_piano: bool = True) -> None:
        self.device = torch.device(device)
        self.base_thresholds = [float(t) for t in thresholds]  # calibrated, per instrument
        self.decode_piano = decode_piano
        self.styles = dict(styles or {})
        self.controls = Controls()
        self.generator = torch.Generator(device=self._random_device())
        self.last_step_ms = 0.0  # wall time of the last step, for status and benchmarks
        self.capped_notes = 0  # notes dropped by models.limits' ceiling, for status
        self.set_controls(controls or Controls())
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the band's previous bars and restart the random stream."""
        self.generator.manual_seed(self.controls.seed if seed is None else seed)
        self.dynamics = DEFAULT_DYNAMICS
        self.key = KeyTracker()
        self._piano: np.ndarray | None = None  # row 0 of the last step, once decoded
        self._piano_scale: np.ndarray | None = None  # the key lock the last step used
        self._reset_stream()

    # ---- what a system brings
    def _random_device(self) -> torch.device:
        """Where the random stream is drawn."""
        return self.device

    def _reset_stream(self) -> None:
        """Forget the networks' memory of earlier bars."""

    def _stream_state(self) -> object:
        """A copy of the networks' memory of earlier bars, for warmup to put back."""
        return None

    def _restore_stream_state(self, state: object) -> None:
        """Put back what `_stream_state` returned."""

    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        """(32, 128) played bar (velocity/127, on CPU) -> (5 - first, 32, 128) float32 in [0, 1]
        for INSTRUMENTS[first:]: the next bar's parts before thresholds."""
        raise NotImplementedError

    def _decode_predicted_piano(self) -> np.ndarray:
        """(1, 32, 128) in [0, 1]: the last step's predicted piano, when that step skipped it."""
        raise NotImplementedError

    # ---- shared by every system
    def set_controls(self, controls: Controls) -> None:
        """Apply a whole setting at once; a new seed restarts the random stream."""
        if controls.style and controls.style not in self.styles:
            known = ", ".join(sorted(self.styles)) or "none"
            raise ValueError(f"unknown style {controls.style!r}; known: {known}")
        reseed = controls.seed != self.controls.seed
        self.controls = controls
        if reseed:
            self.generator.manual_seed(controls.seed)
        # (5,) per instrument, computed once per setting rather than once per bar
        self._thresholds = np.array([self.base_thresholds[0]] + [
            density_threshold(controls.density[name], self.base_thresholds[i]) for i, name in enumerate(BAND, 1)])
        self._gains = np.array([1.0] + [controls.velocity[name] for name in BAND])
        self._playing = np.array([True] + [not controls.mute[name] for name in BAND])

    def step(self, piano_bar: np.ndarray, decode_piano: bool | None = None) -> np.ndarray:
        """Played piano bar t (32, 128), velocity/127 -> bar t+1 (5, 32, 128).

        Rows are [predicted piano, guitar, bass, strings, drums]; cells are 0 or a velocity/127,
        muted instruments are silent. Without `decode_piano` (default: the engine's setting) row 0
        is left silent and `predicted_piano()` makes it on demand.
        """
        if piano_bar.shape != (STEPS_PER_BAR, N_PITCHES):
            raise ValueError(f"piano bar must be ({STEPS_PER_BAR}, {N_PITCHES}), got {piano_bar.shape}")
        started = time.perf_counter()
        first = 0 if (self.decode_piano if decode_piano is None else decode_piano) else 1
        bar = np.array(piano_bar, np.float32)  # a copy: the pianist is heard within BAND_PITCHES only
        bar[:, :BAND_PITCHES.start] = 0.0
        bar[:, BAND_PITCHES.stop:] = 0.0
        played = bar[bar > 0]
        if played.size:
            self.dynamics = float(played.mean())
            self.key.update(bar)
        decoded = self._decode_next(torch.from_numpy(bar), first)  # (5 - first, 32, 128)
        out = np.zeros((len(INSTRUMENTS), STEPS_PER_BAR, N_PITCHES), np.float32)
        self._binarise(decoded, out)
        self._piano_scale = self.key.scale_mask() if self.controls.harmony >= HARMONY_KEY else None
        if self._piano_scale is not None:
            snap_parts_to_scale(out[first:-1], self._piano_scale)  # the pitched rows (drums are last)
        self._piano = out[0].copy() if first == 0 else None
        self.last_step_ms = (time.perf_counter() - started) * 1000
        return out

    def predicted_piano(self) -> np.ndarray:
        """Row 0 of the last step (32, 128), decoded now if that step skipped it: for autopilot."""
        if self._piano is None:
            with torch.inference_mode():
                decoded = self._decode_predicted_piano()  # (1, 32, 128)
            out = self._binarise_rows(decoded, np.array([0]))
            if self._piano_scale is not None:
                snap_parts_to_scale(out, self._piano_scale)
            self._piano = out[0]
        return self._piano.copy()

    def _binarise(self, decoded: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Decoder output of INSTRUMENTS[5 - n:] (n, 32, 128) -> the band's cells (5, 32, 128) in `out`:
        cells above each instrument's threshold, at velocities that follow the pianist."""
        out = np.zeros((len(INSTRUMENTS), STEPS_PER_BAR, N_PITCHES), np.float32) if out is None else out
        first = len(INSTRUMENTS) - len(decoded)
        rows = np.flatnonzero(self._playing[first:]) + first  # muted instruments stay silent
        if len(rows) == len(decoded):
            out[first:] = self._binarise_rows(decoded, rows)
        elif len(rows):
            out[rows] = self._binarise_rows(decoded[rows - first], rows)
        return out

    def _binarise_rows(self, decoded: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The cells (n, 32, 128) of instruments `rows` from their decoder output (n, 32, 128)."""
        thresholds = self._thresholds[rows]
        pitched = PITCHED[rows]
        on = active_cells(decoded, thresholds, pitched)
        empty = ~on.any(axis=(1, 2))
        peaks = None  # each row's highest cell, once a retry needs it
        for looser in RETRIES:  # a band keeps playing: an empty bar is retried at up to 4x the
            if not empty.any():  # density before the instrument rests
                break
            retry = np.flatnonzero(empty)
            thresholds[retry] = self._thresholds[rows[retry]] * looser
            peaks = decoded.max(axis=(1, 2)) if peaks is None else peaks
            retry = retry[peaks[retry] > thresholds[retry]]  # the others stay silent: no cell reaches even this
            if len(retry):
                on[retry] = active_cells(decoded[retry], thresholds[retry], pitched[retry])
                empty[retry] = ~on[retry].any(axis=(1, 2))
        # the decoder's confidence adds a little accent around the pianist's level:
        # velocity = dynamics * gain * (0.85 + 0.3 * (decoded - threshold) / (1 - threshold))
        slope = self.dynamics * self._gains[rows] * 0.3 / np.maximum(1e-6, 1.0 - thresholds)
        level = self.dynamics * self._gains[rows] * 0.85 - slope * thresholds
        velocity = decoded * slope[:, None, None].astype(np.float32)
        velocity += level[:, None, None].astype(np.float32)
        np.clip(velocity, 1 / 127, 1.0, out=velocity)
        velocity *= on
        starts = on.copy()
        starts[:, 1:] &= ~on[:, :-1]  # note onsets, as models.limits counts them
        if np.count_nonzero(starts) > MAX_NOTES_PER_BAR:  # all parts together: one part can be over
            for i in np.flatnonzero(starts.sum(axis=(1, 2)) > MAX_NOTES_PER_BAR):  # rare: a decoder firing everywhere
                self.capped_notes += cap_notes_in_place(velocity[i], decoded[i])
        return velocity

    def warmup(self, steps: int = 3) -> None:
        """A few throw-away steps so the first real bar does not pay for lazy initialisation."""
        saved = (self._stream_state(), self.generator.get_state(), self.dynamics, self.key.histogram.copy(),
                 self._piano, self._piano_scale, self.capped_notes)
        for _ in range(steps):
            self.step(np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32))
        self._restore_stream_state(saved[0])
        self.dynamics, self.key.histogram = saved[2], saved[3]
        self._piano, self._piano_scale, self.capped_notes = saved[4], saved[5], saved[6]
        self.generator.set_state(saved[1])


class BandEngine(BarEngine):
    """VAE-NN, the article's system: its networks plus one stream's previous latents.

    `weights`: "auto" (int8 for the big decoder layers where that is fast: an AVX-512 CPU, see
    models.fused), "float32", "int8", or "modules" (the nn modules: the reference, slow).
    `cuda_graph` (CUDA only; default: on there): each bar's network work is replayed as a CUDA graph
    captured on static buffers (one host -> device copy of the bar, its noise and style in, one copy of
    the decoded parts out), instead of ~25 kernel launches. Elsewhere the same function runs eagerly on
    the same buffers: one code path. The random stream is drawn on the host for every device, so a
    seed gives the same band on CPU and CUDA (to float precision).
    """

    def __init__(self, model: BandModel, styles: Mapping[str, StyleBank] | None = None,
                 device: str | torch.device = "cpu", controls: Controls | None = None,
                 weights: str = "auto", decode_piano: bool = True, cuda_graph: bool | None = None) -> None:
        device = torch.device(device)
        self.model = model.to(device).eval()
        if weights == "auto":
            weights = "int8" if compact_weights_fast(device) and int8_fits(model) else "float32"
        # the per-bar path: a few bmm's (weights="modules": the nn modules, the reference for tests and bench)
        self.fused = (ModuleBand(self.model) if weights == "modules" else FusedBand(self.model, weights)).to(device)
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device, got {device}")
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # (first, styled) ->
        self._make_buffers(model, device)
        super().__init__(model.thresholds.tolist(), styles, device, controls, decode_piano)

    def _random_device(self) -> torch.device:
        return torch.device("cpu")  # the stream is drawn on the host: the same band for a seed on any device

    def _make_buffers(self, model: BandModel, device: torch.device) -> None:
        """One packed input vector per bar: the played bar, the scaled noise, the style latents and
        their alphas (host copy pinned for CUDA, device copy static), and the stream's state."""
        k, config = model.config.latent, model.config
        self._layout = {"bar": (0, STEPS_PER_BAR * N_PITCHES)}
        slots = [("noise", k), ("style", len(INSTRUMENTS) * k), ("alpha", len(INSTRUMENTS))]
        if config.arch == "context":
            slots.append(("features", N_FEATURES))  # the bar's chroma, made on the host (numpy)
        for name, size in slots:
            end = max(stop for _, stop in self._layout.values())
            self._layout[name] = (end, end + size)
        size = max(stop for _, stop in self._layout.values())
        self._host_in = torch.zeros(size, pin_memory=device.type == "cuda")
        self._host_view = self._host_in.numpy()
        self._device_in = self._host_in if device.type == "cpu" else torch.zeros(size, device=device)
        self.previous = torch.zeros(len(INSTRUMENTS), k, device=device)  # (5, K): each part's last latent
        self.history = torch.zeros(max(1, config.context), k, device=device)  # (context, K) recent piano means
        self._fresh = True  # no bar since reset: history is filled with the first bar's mean

    def _reset_stream(self) -> None:
        # (5, K): the latent each instrument played last; at first a typical training bar's
        self.previous.copy_(self.model.initial_latents.detach())
        self._fresh = True

    def _stream_state(self) -> object:
        return self.previous.clone(), self.history.clone(), self._fresh

    def _restore_stream_state(self, state: object) -> None:
        previous, history, self._fresh = state  # type: ignore[misc]
        self.previous.copy_(previous)  # in place: a captured graph reads and writes these very buffers
        self.history.copy_(history)

    def _decode_predicted_piano(self) -> np.ndarray:
        return self.fused.decode(self.previous[:1]).cpu().numpy()

    @torch.inference_mode()
    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        """(32, 128) played bar -> (5 - first, 32, 128) decoder output for INSTRUMENTS[first:]."""
        styled = self._pack_inputs(piano_bar.numpy())
        if self._device_in is not self._host_in:
            self._device_in.copy_(self._host_in, non_blocking=True)  # the bar's one copy in
        if self.cuda_graph and not self._fresh:
            key = (first, styled)
            graph, decoded = self._graphs.get(key) or self._capture(first, styled)
            graph.replay()
        else:  # the first bar after a reset fills the history (a branch a graph cannot hold), and CPU
            decoded = self._network(first, styled)
        self._fresh = False
        return decoded.cpu().numpy()  # the bar's one copy out

    def _pack_inputs(self, bar: np.ndarray) -> bool:
        """Write this bar's inputs into the host buffer; whether a style is mixed in."""
        view, layout = self._host_view, self._layout
        a, b = layout["bar"]
        view[a:b] = bar.reshape(-1)
        if "features" in layout:
            a, b = layout["features"]
            view[a:b] = piano_features_numpy(bar)
        a, b = layout["noise"]
        noise = torch.randn(b - a, generator=self.generator)  # the article's noise on the latent means
        view[a:b] = noise.numpy() * np.float32(self.controls.noise_sd)
        if not self.controls.style:
            return False
        drawn = sample_style(self.styles[self.controls.style], self.generator)
        k = self.model.config.latent
        a, b = layout["style"]
        alpha_at = layout["alpha"][0]
        for i, instrument in enumerate(INSTRUMENTS):
            s = drawn[instrument]
            view[a + i * k : a + (i + 1) * k] = 0.0 if s is None else s.detach().cpu().numpy()
            view[alpha_at + i] = 0.0 if s is None else self.controls.alpha  # no latent of its own: unmixed
        return True

    def _inputs(self, name: str) -> torch.Tensor:
        a, b = self._layout[name]
        return self._device_in[a:b]

    def _network(self, first: int, styled: bool) -> torch.Tensor:
        """One bar on the static buffers: the packed inputs and the stream's state in, the state
        updated in place, (5 - first, 32, 128) decoder output returned. Eager, or captured whole."""
        fused, config = self.fused, self.model.config
        piano_bar = self._inputs("bar").view(STEPS_PER_BAR, N_PITCHES)
        scaled_noise = self._inputs("noise")
        mean = fused.encode_piano(piano_bar)  # (K,)
        features = self._inputs("features") if config.arch == "context" else None
        next_piano = self._next_piano(mean, scaled_noise, features)
        band = fused.next_band(next_piano, self.previous[1:], features)  # (4, K)
        latents = torch.cat([next_piano.unsqueeze(0), band])  # (5, K)
        if styled:  # z' = alpha * s + (1 - alpha) * z per instrument (the original code mixed only the piano)
            alpha = self._inputs("alpha").unsqueeze(1)
            latents = alpha * self._inputs("style").view(len(INSTRUMENTS), -1) + (1 - alpha) * latents
        self.previous.copy_(latents)
        return fused.decode(latents[first:], first)

    def _next_piano(self, mean: torch.Tensor, scaled_noise: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """The predicted next piano latent, by the source training chose (BandConfig.melody_source)."""
        config = self.model.config
        noisy = mean + scaled_noise  # the article's noise on the latent means
        if config.melody_source == "current":
            return noisy
        if config.melody_source == "mean":
            return self.model.initial_latents[0] + scaled_noise
        if config.arch == "article":
            return self.fused.next_piano(noisy)
        if self._fresh:  # the first bar: as training pads a song's start, with itself
            self.history.copy_(mean.expand(config.context, -1))
        self.history.copy_(torch.cat([self.history[1:], mean.unsqueeze(0)]))  # (context, K), clean means
        inputs = torch.cat([self.history[:-1].flatten(), noisy, features])
        return self.fused.next_piano(inputs)

    def _capture(self, first: int, styled: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record `_network` as a CUDA graph on the static buffers (after warm-up runs on a side
        stream, as torch asks), leaving the stream's state as it was."""
        saved = self._stream_state()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # cuBLAS handles and the allocator's pools, made before recording
                self._network(first, styled)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            decoded = self._network(first, styled)
        self._restore_stream_state(saved)
        self._graphs[(first, styled)] = graph, decoded
        return graph, decoded
