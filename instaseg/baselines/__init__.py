"""Classical (untrained) baselines: reference points for the learned models."""

from instaseg.baselines.watershed import segment_nuclei

__all__ = ["segment_nuclei"]
