"""Dataverse Web API: MSAL authentication, a throttling-aware client, and a dry-run stand-in."""
