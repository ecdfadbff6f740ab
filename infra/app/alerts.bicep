// Alerts on the Log Analytics workspace behind Application Insights, sent to an action group that
// e-mails alertEmail. The queries match what the app and the Functions host log (AppTraces) and the
// HTTP answers the host records (AppRequests).

param namePrefix string
param location string
param tags object = {}
param workspaceId string
@description('Address the alerts are e-mailed to; empty = the action group has no receiver.')
param alertEmail string = ''
@description('5xx answers in 15 minutes that raise the alert (the outbound API answers 503 while a provider is failing, so that the journey retries).')
param http5xxThreshold int = 10
@description('Relay attempts that failed (and will be retried) in 15 minutes that raise the alert.')
param relayFailureThreshold int = 20

var alerts = [
  {
    name: '${namePrefix}-poison-queue'
    displayName: 'SMS relay: messages moved to the poison queue'
    description: 'A delivery report or inbound message could not be relayed to Dataverse and is in relay-jobs-poison. Fix the cause, then replay them (python -m storage.replay_poison, see docs/deploy.md).'
    severity: 1
    query: '''
AppTraces
| where Message contains "poisoned" or Message contains "moved to the poison queue" or Message contains "relay-jobs-poison"
'''
    threshold: 0
  }
  {
    name: '${namePrefix}-relay-failures'
    displayName: 'SMS relay: Dataverse relays failing'
    description: 'Relays of delivery reports and inbound messages to Dataverse keep failing and are being retried (Dataverse unreachable, throttling, or refusing the application user).'
    severity: 2
    query: '''
AppTraces
| where Message contains "not relayed" or Message contains "unexpected failure relaying"
'''
    threshold: relayFailureThreshold - 1
  }
  {
    name: '${namePrefix}-http-5xx'
    displayName: 'SMS channel: 5xx answers'
    description: 'The Function App answered 5xx: a provider or storage is failing (outbound answers 503 so the journey retries), or a webhook could not be queued.'
    severity: 2
    query: '''
AppRequests
| where toint(ResultCode) >= 500
'''
    threshold: http5xxThreshold - 1
  }
]

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-alerts'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'smsalerts'
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [
      {
        name: 'email'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource rules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in alerts: {
  name: alert.name
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: alert.displayName
    description: alert.description
    severity: alert.severity
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: alert.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: alert.threshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}]

output actionGroupId string = actionGroup.id
