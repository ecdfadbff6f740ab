// The relay plug-ins: the main operation of the channel's own delivery-report and inbound custom APIs. Each hands
// its custom API's payload string, unchanged, to Journeys' base action (msdyn_D365ChannelsNotification,
// msdyn_D365ChannelsInbound) as the system user, and copies the base action's "responseMessage" back. See
// plugin/README.md.
//
// .NET Framework 4.6.2, C# 7.3 at most, base class library + Microsoft.Xrm.Sdk only (runs in the Dataverse sandbox).
using System;
using System.Diagnostics;
using System.Globalization;
using Microsoft.Xrm.Sdk;

namespace SmsChannel.Plugin
{
    /// <summary>
    /// Main-operation plug-in of &lt;prefix&gt;_SmsDeliveryReport: its "notificationPayLoad" goes to
    /// msdyn_D365ChannelsNotification. Stateless (no fields): one cached instance serves all threads.
    /// </summary>
    public sealed class DeliveryReportRelay : IPlugin
    {
        public void Execute(IServiceProvider serviceProvider)
        {
            BaseActionRelay.Execute(serviceProvider, "DeliveryReportRelay", "msdyn_D365ChannelsNotification",
                "notificationPayLoad");
        }
    }

    /// <summary>
    /// Main-operation plug-in of &lt;prefix&gt;_SmsInbound: its "inboundPayLoad" goes to
    /// msdyn_D365ChannelsInbound. Stateless (no fields): one cached instance serves all threads.
    /// </summary>
    public sealed class InboundRelay : IPlugin
    {
        public void Execute(IServiceProvider serviceProvider)
        {
            BaseActionRelay.Execute(serviceProvider, "InboundRelay", "msdyn_D365ChannelsInbound", "inboundPayLoad");
        }
    }

    internal static class BaseActionRelay
    {
        /// <summary>The String response property of both custom APIs, and the base actions' result.</summary>
        private const string ResponseMessage = "responseMessage";

        /// <summary>
        /// Runs <paramref name="baseAction"/> with <paramref name="parameter"/> = the custom API's input of the same
        /// name. The custom API's own name is never read: it differs per environment (its prefix).
        /// </summary>
        public static void Execute(IServiceProvider serviceProvider, string traceName, string baseAction,
            string parameter)
        {
            if (serviceProvider == null)
            {
                throw new InvalidPluginExecutionException(
                    traceName + ": Execute was called without a service provider.");
            }
            var tracing = (ITracingService)serviceProvider.GetService(typeof(ITracingService));
            var context = (IPluginExecutionContext)serviceProvider.GetService(typeof(IPluginExecutionContext));
            var factory = (IOrganizationServiceFactory)serviceProvider.GetService(typeof(IOrganizationServiceFactory));
            if (context == null || factory == null)
            {
                throw new InvalidPluginExecutionException(traceName + ": the service provider has no "
                    + (context == null ? "IPluginExecutionContext" : "IOrganizationServiceFactory") + ".");
            }

            object input;
            var payload = context.InputParameters != null && context.InputParameters.TryGetValue(parameter, out input)
                ? input as string
                : null;
            if (string.IsNullOrWhiteSpace(payload))
            {
                Trace(tracing, "{0}: outcome=NoPayload", traceName);
                throw new InvalidPluginExecutionException(string.Format(CultureInfo.InvariantCulture,
                    "The custom API was called without its \"{0}\" input parameter (a non-empty string): {1} "
                    + "relays it to {2} unchanged.", parameter, traceName, baseAction));
            }

            // null: the system user, so the caller needs no privilege on the base action, only on this custom API
            var service = factory.CreateOrganizationService(null);
            var request = new OrganizationRequest(baseAction);
            request[parameter] = payload;
            var watch = Stopwatch.StartNew();
            OrganizationResponse response;
            try
            {
                response = service.Execute(request);
            }
            catch (Exception exc)
            {
                // The base action's own fault goes to the caller as it is (its message and error code, as if the
                // caller had called the base action). The trace holds no message: it may quote the payload.
                Trace(tracing, "{0}: outcome=Failed error={1} payloadChars={2} durationMs={3}", traceName,
                    exc.GetType().Name, payload.Length, watch.ElapsedMilliseconds);
                throw;
            }

            object result = null;
            var message = response != null && response.Results != null
                          && response.Results.TryGetValue(ResponseMessage, out result)
                ? result as string
                : null;
            if (message != null)
            {
                context.OutputParameters[ResponseMessage] = message;
            }
            Trace(tracing, "{0}: outcome=Relayed payloadChars={1} responseMessageChars={2} durationMs={3}", traceName,
                payload.Length, message == null ? "(none)" : message.Length.ToString(CultureInfo.InvariantCulture),
                watch.ElapsedMilliseconds);
        }

        private static void Trace(ITracingService tracing, string format, params object[] args)
        {
            if (tracing != null)
            {
                tracing.Trace(format, args);
            }
        }
    }
}
