"""Provisioning of the custom SMS channel in Dataverse: ``python -m provisioning {plan,apply,verify,remove}``.

Modules: :mod:`provisioning.options` (flags and settings), :mod:`provisioning.webapi` (a small Web
API client on the app's MSAL token provider), :mod:`provisioning.components` (the desired state:
:mod:`provisioning.outbound` and :mod:`provisioning.channel`, on :mod:`provisioning.base`),
:mod:`provisioning.plan` (findings) and :mod:`provisioning.commands` (the four commands).
See ``docs/setup-guide.md`` for the admin's path from zero.
"""
