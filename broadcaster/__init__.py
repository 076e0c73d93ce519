"""broadcaster: real-time text-to-speech announcements for public address."""

__version__ = "0.1.0"
