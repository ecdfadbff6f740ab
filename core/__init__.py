"""The channel's own logic, independent of Azure Functions: settings, SMS rules, send state."""
