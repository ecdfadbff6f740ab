// Storage for the Functions host, the app's send-state tables and relay queues, and the Flex
// Consumption deployment package. No account keys: every caller authenticates with Entra ID.

param name string
param location string
param tags object = {}
@description('Blob container that Flex Consumption deploys the app package from.')
param deploymentContainerName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No virtual network in this template: Flex Consumption reaches storage over its public endpoint. Shared keys are disabled, so every request needs an Entra token and an RBAC role.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: public endpoint kept (no VNet), access is identity-only.
  // checkov:skip=CKV_AZURE_206:Locally redundant on purpose: the data is transient send state (RETENTION_DAYS) and a relay queue; geo-replication would add cost for nothing the app can use.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource blobServices 'blobServices' = {
    name: 'default'
    properties: {
      deleteRetentionPolicy: {
        enabled: true
        days: 7
      }
    }

    resource deploymentContainer 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
