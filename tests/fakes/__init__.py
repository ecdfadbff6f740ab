"""Real local servers that play the parts the app talks to: providers, storage, identity."""
