// The Function App on a Flex Consumption (FC1) plan, Python 3.11, running as a user-assigned identity.

param name string
param planName string
param location string
param tags object = {}

param identityId string
param identityClientId string

param blobEndpoint string
param queueEndpoint string
param tableEndpoint string
param deploymentContainerName string
param applicationInsightsConnectionString string
param keyVaultName string

param smsProvider string
param senderRoutes string = ''
param publicBaseUrl string = ''
param providerSettings object = {}
param extraAppSettings object = {}
param keyVaultSecrets string = ''
param dataverseUrl string = ''
param dataverseClientId string = ''
param dataverseOrganizationId string = ''
param channelDefinitions string = ''

param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048

// Secret settings, as "<settings prefix>:<field>": the app's SecretStr settings. A setting named
// <PREFIX>_<FIELD> or <PREFIX>_<ACCOUNT>_<FIELD> (a SENDER_ROUTES account) that matches one is only
// ever a Key Vault reference: a value passed for it in providerSettings or extraAppSettings is
// dropped, never written into the app settings.
var secretSettingPatterns = [
  'TWILIO:AUTH_TOKEN'
  'TWILIO:API_KEY_SECRET'
  'TWILIO:WEBHOOK_SHARED_KEY'
  'ACS:CONNECTION_STRING'
  'ACS:WEBHOOK_SECRET'
  'ACS:WEBHOOK_SECRET_PREVIOUS'
  'TELNYX:API_KEY'
  'PLIVO:AUTH_TOKEN'
  'VONAGE:API_SECRET'
  'VONAGE:SIGNATURE_SECRET'
  'INFOBIP:API_KEY'
  'INFOBIP:WEBHOOK_PASSWORD'
  'SIMULATOR:WEBHOOK_SECRET'
  'AZURE:CLIENT_SECRET'
  'AZURE:CLIENT_CERTIFICATE_PASSWORD'
]

// Settings whose value is a Key Vault secret of the same name in kebab case
// (TWILIO_AUTH_TOKEN -> twilio-auth-token), e.g. 'TWILIO_AUTH_TOKEN,TWILIO_WEBHOOK_SHARED_KEY'.
var keyVaultSettingNames = filter(split(replace(keyVaultSecrets, ' ', ''), ','), name => !empty(name))
var keyVaultSettingEntries = [for settingName in keyVaultSettingNames: '"${settingName}": ""']
var keyVaultSettings = json('{${join(keyVaultSettingEntries, ',')}}')

var baseSettings = {
  // host storage through the managed identity; there is no AzureWebJobsStorage connection string
  AzureWebJobsStorage__blobServiceUri: blobEndpoint
  AzureWebJobsStorage__queueServiceUri: queueEndpoint
  AzureWebJobsStorage__tableServiceUri: tableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // telemetry: the worker configures the Azure Monitor OpenTelemetry distro; ingestion is Entra-only
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  SMS_PROVIDER: smsProvider
  SENDER_ROUTES: senderRoutes
  PUBLIC_BASE_URL: empty(publicBaseUrl) ? 'https://${name}.azurewebsites.net' : publicBaseUrl
  ACS_MANAGED_IDENTITY_CLIENT_ID: identityClientId
  DATAVERSE_URL: dataverseUrl
  DATAVERSE_ORGANIZATION_ID: dataverseOrganizationId
  DATAVERSE_CHANNEL_DEFINITIONS: channelDefinitions
  // the package directory is read-only on Flex Consumption; dry runs (no DATAVERSE_URL) write here
  DATAVERSE_DRY_RUN_FILE: '/tmp/dataverse-dry-run.jsonl'
  AZURE_TENANT_ID: tenant().tenantId
  // an app registration (with AZURE_CLIENT_SECRET from Key Vault), else this managed identity
  AZURE_CLIENT_ID: empty(dataverseClientId) ? identityClientId : dataverseClientId
}

// Later objects win: the settings above cannot be overridden by providerSettings or extraAppSettings.
var settings = union(providerSettings, extraAppSettings, keyVaultSettings, baseSettings)
var settingNames = [for setting in items(settings): setting.key]
var settingValues = [for setting in items(settings): setting.value]
var settingWords = [for settingName in settingNames: split(settingName, '_')]
// "<first word>:<last 1, 2 or 3 words>" of each name, to match secretSettingPatterns
var lastWord = [for words in settingWords: format('{0}:{1}', first(words), last(words))]
var lastTwoWords = [for words in settingWords: format('{0}:{1}', first(words), join(skip(words, length(words) - 2), '_'))]
var lastThreeWords = [for words in settingWords: format('{0}:{1}', first(words), join(skip(words, length(words) - 3), '_'))]
var isSecret = [for (settingName, i) in settingNames: !contains(baseSettings, settingName) && (contains(keyVaultSettingNames, settingName) || contains(secretSettingPatterns, lastWord[i]) || contains(secretSettingPatterns, lastTwoWords[i]) || contains(secretSettingPatterns, lastThreeWords[i]))]
var secretNames = [for settingName in settingNames: toLower(replace(settingName, '_', '-'))]
var appSettings = [for (settingName, i) in settingNames: {
  name: settingName
  value: isSecret[i] ? '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${secretNames[i]})' : string(settingValues[i])
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
  // checkov:skip=CKV_AZURE_225:No availability-zone redundancy: it is not offered in every Flex Consumption region and the journey runtime and SMS providers retry a failed call (503) anyway.
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:The Dynamics 365 plug-in and the SMS providers call this app over the internet; requests are authenticated by a function key (outbound) or the provider's webhook signature.
  // checkov:skip=CKV_AZURE_17:Neither the Dynamics 365 sandbox plug-in nor the SMS providers can present client certificates; see CKV_AZURE_222 for how callers are authenticated.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero on demand; a minimum instance count would be always-ready instances billed around the clock.
  // checkov:skip=CKV_AZURE_213:Not configured: instances come and go with demand on Flex Consumption, and GET /api/health answers external probes (whether the platform health check applies to Flex Consumption is unverified).
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: appSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// deployments go through Entra ID (azd, Core Tools); no publishing user names and passwords
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output publicBaseUrl string = baseSettings.PUBLIC_BASE_URL
