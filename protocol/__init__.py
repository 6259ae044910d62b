"""What crosses the wire: message kinds, round config, adapter codec, atomic file I/O."""
