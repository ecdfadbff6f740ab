"""What the app does: send (outbound), take in webhooks (intake), relay to Dataverse, route senders
to provider adapters; and the composition that builds them. Independent of Azure Functions' types."""
