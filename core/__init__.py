"""The lowest layer: settings, phone numbers, SMS segments, Retry-After. Imports no other app package."""
