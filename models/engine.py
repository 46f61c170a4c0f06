"""BandEngine: one played piano bar in, the band's next bar out. No I/O, no threads.

The live daemon and the offline render both call `step`, so what is heard live is what render
and evaluation measure. Given the same seed, controls and inputs, the outputs are the same.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import torch

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.controls import Controls, density_threshold
from models.fused import FusedBand
from models.chords import HARMONY_KEY
from models.harmony import KeyTracker, snap_to_scale
from models.limits import cap_notes_in_place
from models.networks import BandModel, piano_features
from models.style import StyleBank, sample_style

DEFAULT_DYNAMICS = 90 / 127  # velocity used before the pianist has played anything


def drop_blips(on: np.ndarray) -> np.ndarray:
    """Remove one-step (32nd) notes from a (32, 128) pitched part: the blurred decoder scatters
    them, the data has almost none (QN ~0.95), and they sound like a stutter."""
    held = np.zeros_like(on)
    held[1:] |= on[:-1]  # the step before is on
    held[:-1] |= on[1:]  # the step after is on
    return on & held


def active_cells(decoded: np.ndarray, threshold: float, instrument: str) -> np.ndarray:
    on = decoded > threshold
    return on if instrument == "drums" else drop_blips(on)


class BandEngine:
    """The networks plus one stream's state: previous latents, controls, random stream."""

    def __init__(self, model: BandModel, styles: Mapping[str, StyleBank] | None = None,
                 device: str | torch.device = "cpu", controls: Controls | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.fused = FusedBand(self.model).to(self.device)  # the per-bar path: a few bmm's
        self.base_thresholds = [float(t) for t in model.thresholds]  # calibrated, per instrument
        self.styles = dict(styles or {})
        self.controls = Controls()
        self.generator = torch.Generator(device=self.device)
        self.last_step_ms = 0.0  # wall time of the last step, for status and benchmarks
        self.set_controls(controls or Controls())
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the band's previous bars and restart the random stream."""
        self.generator.manual_seed(self.controls.seed if seed is None else seed)
        # (5, K): the latent each instrument played last; at first a typical training bar's
        self.previous = self.model.initial_latents.detach().clone().to(self.device)
        self.history: torch.Tensor | None = None  # (context, K) recent piano latent means (arch "context")
        self.dynamics = DEFAULT_DYNAMICS
        self.key = KeyTracker()

    def set_controls(self, controls: Controls) -> None:
        """Apply a whole setting at once; a new seed restarts the random stream."""
        if controls.style and controls.style not in self.styles:
            known = ", ".join(sorted(self.styles)) or "none"
            raise ValueError(f"unknown style {controls.style!r}; known: {known}")
        reseed = controls.seed != self.controls.seed
        self.controls = controls
        if reseed:
            self.generator.manual_seed(controls.seed)

    def step(self, piano_bar: np.ndarray) -> np.ndarray:
        """Played piano bar t (32, 128), velocity/127 -> bar t+1 (5, 32, 128).

        Rows are [predicted piano, guitar, bass, strings, drums]; cells are 0 or a velocity/127,
        muted instruments are silent.
        """
        if piano_bar.shape != (STEPS_PER_BAR, N_PITCHES):
            raise ValueError(f"piano bar must be ({STEPS_PER_BAR}, {N_PITCHES}), got {piano_bar.shape}")
        started = time.perf_counter()
        played = piano_bar[piano_bar > 0]
        if played.size:
            self.dynamics = float(played.mean())
            self.key.update(piano_bar)
        decoded = self._decode_next(torch.from_numpy(np.ascontiguousarray(piano_bar, np.float32)))
        out = self._binarise(decoded)
        scale = self.key.scale_mask() if self.controls.harmony >= HARMONY_KEY else None
        if scale is not None:
            for i, instrument in enumerate(INSTRUMENTS):
                if instrument != "drums":
                    out[i] = snap_to_scale(out[i], scale)
        self.last_step_ms = (time.perf_counter() - started) * 1000
        return out

    @torch.inference_mode()
    def _decode_next(self, piano_bar: torch.Tensor) -> np.ndarray:
        fused, controls, config = self.fused, self.controls, self.model.config
        piano_bar = piano_bar.to(self.device)
        mean = fused.encode_piano(piano_bar)  # (K,)
        noise = torch.randn(mean.shape, generator=self.generator, device=self.device)
        noisy = mean + controls.noise_sd * noise  # the article's noise on the latent means
        features = piano_features(piano_bar.unsqueeze(0))[0] if config.arch == "context" else None
        next_piano = self._next_piano(mean, noisy, noise, features)
        band = fused.next_band(next_piano, self.previous[1:], features)  # (4, K)
        latents = self._mix_style(torch.cat([next_piano.unsqueeze(0), band]))  # (5, K)
        self.previous = latents
        return fused.decode(latents).cpu().numpy()  # (5, 32, 128)

    def _next_piano(self, mean: torch.Tensor, noisy: torch.Tensor, noise: torch.Tensor,
                    features: torch.Tensor | None) -> torch.Tensor:
        """The predicted next piano latent, by the source training chose (BandConfig.melody_source)."""
        config = self.model.config
        if config.melody_source == "current":
            return noisy
        if config.melody_source == "mean":
            return self.model.initial_latents[0] + self.controls.noise_sd * noise
        if config.arch == "article":
            return self.fused.next_piano(noisy)
        if self.history is None:  # the first bar: as training pads a song's start, with itself
            self.history = mean.expand(config.context, -1).clone()
        self.history = torch.cat([self.history[1:], mean.unsqueeze(0)])  # (context, K), clean means
        inputs = torch.cat([self.history[:-1].flatten(), noisy, features])
        return self.fused.next_piano(inputs)

    def _mix_style(self, latents: torch.Tensor) -> torch.Tensor:
        """z' = alpha * s + (1 - alpha) * z per instrument (the original code mixed only the piano)."""
        if not self.controls.style:
            return latents
        drawn = sample_style(self.styles[self.controls.style], self.generator)
        alpha = self.controls.alpha
        mixed = latents.clone()
        for i, instrument in enumerate(INSTRUMENTS):
            s = drawn[instrument]
            if s is not None:
                mixed[i] = alpha * s.to(self.device) + (1 - alpha) * latents[i]
        return mixed

    def _binarise(self, decoded: np.ndarray) -> np.ndarray:
        """Keep cells above each instrument's threshold, at velocities that follow the pianist."""
        out = np.zeros_like(decoded)
        for i, instrument in enumerate(INSTRUMENTS):
            if instrument == "piano":
                threshold, gain = self.base_thresholds[i], 1.0
            else:
                if self.controls.mute[instrument]:
                    continue
                threshold = density_threshold(self.controls.density[instrument], self.base_thresholds[i])
                gain = self.controls.velocity[instrument]
            on = active_cells(decoded[i], threshold, instrument)
            for looser in (threshold / 2, threshold / 4):  # a band keeps playing: an empty bar
                if on.any():  # is retried at up to 4x the density before the instrument rests
                    break
                on, threshold = active_cells(decoded[i], looser, instrument), looser
            # the decoder's confidence adds a little accent around the pianist's level
            accent = 0.85 + 0.3 * (decoded[i] - threshold) / max(1e-6, 1.0 - threshold)
            out[i][on] = np.clip(self.dynamics * gain * accent[on], 1 / 127, 1.0)
            self.capped_notes = getattr(self, "capped_notes", 0) + cap_notes_in_place(out[i], decoded[i])
        return out

    def warmup(self, steps: int = 3) -> None:
        """A few throw-away steps so the first real bar does not pay for lazy initialisation."""
        saved = (self.previous.clone(), self.generator.get_state(), self.dynamics, self.key.histogram.copy(),
                 self.history)
        for _ in range(steps):
            self.step(np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32))
        self.previous, self.dynamics, self.key.histogram, self.history = saved[0], saved[2], saved[3], saved[4]
        self.generator.set_state(saved[1])
