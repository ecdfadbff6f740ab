// Key Vault for provider credentials and, where used, the Dataverse client secret. Access is by RBAC
// only (no access policies); the app reads secrets through Key Vault references in its app settings.

param name string
param location string
param tags object = {}
@description('Days a deleted vault or secret stays recoverable (and, with purge protection, its name taken).')
param softDeleteRetentionInDays int = 7

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:No virtual network in this template: the Function App resolves Key Vault references over the public endpoint. Reads need an Entra token and the Key Vault Secrets User role.
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: public endpoint kept (no VNet), access is RBAC-only.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
