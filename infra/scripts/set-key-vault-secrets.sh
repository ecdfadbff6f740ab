#!/bin/sh
# azd postprovision hook: copy secret app settings from the azd environment into Key Vault.
#
# For each app setting named in KEY_VAULT_SECRETS (e.g. "TWILIO_AUTH_TOKEN,TWILIO_WEBHOOK_SHARED_KEY")
# that has a value in the azd environment (`azd env set TWILIO_AUTH_TOKEN ...`), set the Key Vault
# secret of the same name in kebab case (twilio-auth-token), which the app setting references.
# Names without a value are left alone: set those with `az keyvault secret set` yourself.
# Values go to az through a private temporary file: never on a command line, never printed.
set -eu

say() { printf 'set-key-vault-secrets: %s\n' "$*" >&2; }

if [ -z "${KEY_VAULT_SECRETS:-}" ]; then
  say "KEY_VAULT_SECRETS is empty: nothing to copy"
  exit 0
fi
vault=${AZURE_KEY_VAULT_NAME:?AZURE_KEY_VAULT_NAME is not set (an output of azd provision)}

set -f  # no globbing of the names
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for name in $(printf '%s' "$KEY_VAULT_SECRETS" | tr ',' ' '); do
  case "$name" in
    *[!A-Za-z0-9_]* | [0-9]*)
      say "'$name' in KEY_VAULT_SECRETS is not an app setting name"
      exit 1
      ;;
  esac
  value=$(printenv "$name" || true)
  secret=$(printf '%s' "$name" | tr 'A-Z_' 'a-z-')
  if [ -z "$value" ]; then
    say "$name: no value in the azd environment; Key Vault secret $secret left as it is"
    continue
  fi
  printf '%s' "$value" >"$tmp/value"
  az keyvault secret set --vault-name "$vault" --name "$secret" --file "$tmp/value" --encoding utf-8 \
    --output none
  rm -f "$tmp/value"
  say "$name -> Key Vault secret $secret"
done
