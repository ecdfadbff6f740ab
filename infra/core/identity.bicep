// The Function App's user-assigned managed identity: host storage, the app's own tables and queues,
// Key Vault references, Entra-authenticated Application Insights ingestion and (when no app
// registration is given) Dataverse all use it.

param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
