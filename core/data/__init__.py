"""Data: where it comes from, reading folders and archives safely, decoding and caching, augmentation."""
