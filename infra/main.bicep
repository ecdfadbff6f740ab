// azd entry point: a resource group holding the SMS custom channel's Function App (Flex Consumption),
// its managed identity, storage, Key Vault, monitoring and alerts. Every module is a local file, so
// the templates can be parsed and scanned offline (tests/test_infra.py).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group and seeds the other resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource; Flex Consumption is offered in a subset of regions (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of whoever runs azd (AZURE_PRINCIPAL_ID): may set Key Vault secrets. Empty = no role.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'

@description('SMS_PROVIDER: the provider every sender without a SENDER_ROUTES entry sends through.')
@allowed([
  'simulator'
  'twilio'
  'acs'
  'telnyx'
  'plivo'
  'vonage'
  'infobip'
])
param smsProvider string = 'simulator'

@description('SENDER_ROUTES: sender=provider[:account],... (empty: every sender uses smsProvider).')
param senderRoutes string = ''

@description('Non-secret provider settings, e.g. {"TWILIO_ACCOUNT_SID": "AC..."}. Secret settings never take a value from here: they are Key Vault references (keyVaultSecrets).')
param providerSettings object = {}

@description('Comma-separated app settings whose values are Key Vault secrets of the same name in kebab case, e.g. "TWILIO_AUTH_TOKEN,TWILIO_WEBHOOK_SHARED_KEY" (secret twilio-auth-token, ...).')
param keyVaultSecrets string = ''

@description('Other non-secret app settings (tuning, e.g. {"MAX_SEGMENTS": "6"}); the same secret rule as providerSettings applies.')
param extraAppSettings object = {}

@description('PUBLIC_BASE_URL, when the app is reached through another host name (custom domain, front door). Empty: https://<app>.azurewebsites.net.')
param publicBaseUrl string = ''

@description('DATAVERSE_URL, e.g. https://contoso.crm.dynamics.com. Empty: dry run (relays are written to a file, not sent).')
param dataverseUrl string = ''

@description('Client id of an app registration for Dataverse (its secret: AZURE_CLIENT_SECRET in keyVaultSecrets). Empty: the Function App\'s managed identity is the Dataverse application user.')
param dataverseClientId string = ''

@description('DATAVERSE_ORGANIZATION_ID (skips the WhoAmI call); optional.')
param dataverseOrganizationId string = ''

@description('DATAVERSE_CHANNEL_DEFINITIONS: "+14155550100=<ChannelDefinitionId>,..." (empty: looked up in Dataverse).')
param channelDefinitions string = ''

@description('E-mail address for the alerts; empty = alerts fire without notifying anyone.')
param alertEmail string = ''

param http5xxThreshold int = 10
param relayFailureThreshold int = 20

@description('Flex Consumption scale-out limit. Each instance opens up to DATAVERSE_MAX_CONCURRENCY requests to Dataverse.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'core/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
  }
}

module monitoring 'core/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module keyVault 'core/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
  }
}

module access 'app/access.bicep' = {
  name: 'access'
  scope: rg
  params: {
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
  }
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultName: keyVault.outputs.name
    smsProvider: smsProvider
    senderRoutes: senderRoutes
    publicBaseUrl: publicBaseUrl
    providerSettings: providerSettings
    extraAppSettings: extraAppSettings
    keyVaultSecrets: keyVaultSecrets
    dataverseUrl: dataverseUrl
    dataverseClientId: dataverseClientId
    dataverseOrganizationId: dataverseOrganizationId
    channelDefinitions: channelDefinitions
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // the host needs its storage roles, and Key Vault references their reader, before it starts
  dependsOn: [
    access
  ]
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'sms-${resourceToken}'
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
    alertEmail: alertEmail
    http5xxThreshold: http5xxThreshold
    relayFailureThreshold: relayFailureThreshold
  }
}

// azd stores these in the environment (azd env get-values); python -m provisioning and the hooks read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_HOST string = functionApp.outputs.defaultHostName
output OUTBOUND_URL string = 'https://${functionApp.outputs.defaultHostName}/api/outbound'
output PUBLIC_BASE_URL string = functionApp.outputs.publicBaseUrl
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output FUNCTION_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
