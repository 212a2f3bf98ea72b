"""vblaze-bridge: SIP calls in, V-Blaze realtime transcripts out."""

__version__ = "0.1.0"
