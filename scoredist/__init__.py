"""scoredist: score distillation as a bridge between image distributions — SDS, NFSD, CSD, VSD, DDS and ours."""

__version__ = "0.1.0"
