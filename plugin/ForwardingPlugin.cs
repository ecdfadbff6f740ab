// The forwarding plug-in: a synchronous PostOperation step on the channel's outbound custom API that POSTs the
// custom API's "payload" string to the Function app (POST /api/outbound, envelope {"payload": "<string>"}) and
// copies the app's "response" string into OutputParameters["response"]. See plugin/README.md.
//
// .NET Framework 4.6.2, C# 7.3 at most, base class library + Microsoft.Xrm.Sdk only (runs in the Dataverse sandbox);
// JSON through DataContractJsonSerializer and the contracts in JsonContracts.cs.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Net.Http;
using System.Text;
using System.Threading;
using Microsoft.Xrm.Sdk;
using SmsChannel.Plugin.Wire;

namespace SmsChannel.Plugin
{
    /// <summary>
    /// Forwards the outbound custom API's payload to the SMS Function app.
    /// Unsecure configuration: {"url": "https://&lt;app&gt;/api/outbound", "timeoutSeconds": 15}.
    /// Secure configuration: {"functionKey": "&lt;key&gt;"}, sent as the x-functions-key header.
    /// Stateless: every field is read-only and set by the constructor, so one cached instance can serve all threads.
    /// </summary>
    public sealed class OutboundForwarder : IPlugin
    {
        /// <summary>
        /// Journeys gives the whole custom API call 20 seconds, then counts the attempt as failed and tries again:
        /// the app's answer (its SEND_BUDGET_SECONDS, at most 9, plus a cold start) must fit in this timeout, and
        /// this timeout plus the plug-in's own work must fit in the 20 seconds (README "Twenty seconds").
        /// </summary>
        public const int DefaultTimeoutSeconds = 15;
        public const int MinTimeoutSeconds = 1;
        /// <summary>16 s, plus at most 3 s of the plug-in's own work and Dataverse's pipeline: under 20 s.</summary>
        public const int MaxTimeoutSeconds = 16;

        private const string TraceName = "OutboundForwarder";
        private const string FunctionKeyHeader = "x-functions-key";
        private const string UnsecureExample = "{\"url\": \"https://<app>/api/outbound\", \"timeoutSeconds\": 15}";
        private const string SecureExample = "{\"functionKey\": \"<key>\"}";

        // One client for every instance: HttpClient is safe to share between threads and is never changed after
        // construction (no default headers; each call's timeout is its own cancellation token).
        private static readonly HttpClient Http = new HttpClient(new HttpClientHandler
        {
            AllowAutoRedirect = false,
            UseCookies = false,
        })
        {
            Timeout = System.Threading.Timeout.InfiniteTimeSpan,
        };

        private readonly Uri _url;
        private readonly TimeSpan _timeout;
        private readonly string _functionKey;
        private readonly string _configurationError;

        public OutboundForwarder(string unsecureConfig, string secureConfig)
        {
            // A configuration problem is reported by Execute, as an InvalidPluginExecutionException naming it: thrown
            // here it would reach the caller only as a failure to create the plug-in type.
            var problems = new List<string>();
            Uri url = null;
            var timeoutSeconds = (double)DefaultTimeoutSeconds;
            string functionKey = null;

            var unsecure = JsonText.Read<UnsecureConfiguration>(unsecureConfig);
            if (string.IsNullOrWhiteSpace(unsecureConfig))
            {
                problems.Add("the unsecure configuration is empty; it must be JSON like " + UnsecureExample);
            }
            else if (unsecure == null)
            {
                problems.Add("the unsecure configuration is not a JSON object like " + UnsecureExample);
            }
            else
            {
                var urlText = unsecure.Url as string;
                if (unsecure.Url == null)
                {
                    problems.Add("\"url\" is missing from the unsecure configuration " + UnsecureExample);
                }
                else if (urlText == null || !Uri.TryCreate(urlText.Trim(), UriKind.Absolute, out url)
                         || (url.Scheme != Uri.UriSchemeHttps && url.Scheme != Uri.UriSchemeHttp))
                {
                    url = null;
                    problems.Add("\"url\" in the unsecure configuration is not an absolute https:// URL");
                }
                if (unsecure.TimeoutSeconds != null)
                {
                    double seconds;
                    if (!TryNumber(unsecure.TimeoutSeconds, out seconds) || double.IsNaN(seconds)
                        || seconds < MinTimeoutSeconds || seconds > MaxTimeoutSeconds)
                    {
                        problems.Add(string.Format(CultureInfo.InvariantCulture,
                            "\"timeoutSeconds\" in the unsecure configuration must be a number of seconds from {0} to "
                            + "{1} (default {2})", MinTimeoutSeconds, MaxTimeoutSeconds, DefaultTimeoutSeconds));
                    }
                    else
                    {
                        timeoutSeconds = seconds;
                    }
                }
            }

            // never echo the secure configuration: it holds the key
            var secure = JsonText.Read<SecureConfiguration>(secureConfig);
            if (string.IsNullOrWhiteSpace(secureConfig))
            {
                problems.Add("the secure configuration is empty; it must be JSON like " + SecureExample);
            }
            else if (secure == null)
            {
                problems.Add("the secure configuration is not a JSON object like " + SecureExample);
            }
            else
            {
                var key = secure.FunctionKey as string;
                if (string.IsNullOrWhiteSpace(key))
                {
                    problems.Add("\"functionKey\" is missing from the secure configuration " + SecureExample);
                }
                else if (!IsHeaderToken(key.Trim()))
                {
                    problems.Add("\"functionKey\" in the secure configuration holds spaces or characters a header "
                                 + "value cannot carry");
                }
                else
                {
                    functionKey = key.Trim();
                }
            }

            _url = url;
            _timeout = TimeSpan.FromSeconds(timeoutSeconds);
            _functionKey = functionKey;
            _configurationError = problems.Count == 0
                ? null
                : "The forwarding plug-in step of the SMS channel is misconfigured: " + string.Join("; ", problems)
                  + ".";
        }

        public void Execute(IServiceProvider serviceProvider)
        {
            if (serviceProvider == null)
            {
                throw new InvalidPluginExecutionException(
                    TraceName + ": Execute was called without a service provider.");
            }
            var tracing = (ITracingService)serviceProvider.GetService(typeof(ITracingService));
            var context = (IPluginExecutionContext)serviceProvider.GetService(typeof(IPluginExecutionContext));
            if (context == null)
            {
                throw new InvalidPluginExecutionException(
                    TraceName + ": the service provider has no IPluginExecutionContext.");
            }
            if (_configurationError != null)
            {
                Trace(tracing, "{0}: outcome=Misconfigured ({1})", TraceName, _configurationError);
                throw new InvalidPluginExecutionException(_configurationError);
            }

            object input;
            var payload = context.InputParameters != null && context.InputParameters.TryGetValue("payload", out input)
                ? input as string
                : null;
            if (payload == null)
            {
                Trace(tracing, "{0}: outcome=NoPayload", TraceName);
                throw new InvalidPluginExecutionException(
                    "The outbound custom API was called without its \"payload\" input parameter (a string).");
            }

            var requestId = RequestIdOf(payload);
            var watch = Stopwatch.StartNew();
            Answer answer;
            try
            {
                answer = Post(payload);
            }
            catch (Exception exc)
            {
                var timedOut = exc is TimeoutException;
                Trace(tracing, "{0}: RequestId={1} outcome={2} durationMs={3}", TraceName, requestId,
                    timedOut ? "Timeout" : "Unreachable", watch.ElapsedMilliseconds);
                throw new InvalidPluginExecutionException(string.Format(CultureInfo.InvariantCulture,
                    "The SMS app {0} for RequestId {1}: retry later with the same RequestId (the app never sends one "
                    + "RequestId twice).", timedOut ? exc.Message : "could not be reached (" + Innermost(exc) + ")",
                    requestId));
            }

            if (answer.Status == 200)
            {
                var envelope = JsonText.Read<OutboundAnswer>(answer.Body);
                var response = envelope == null ? null : envelope.Response as string;
                if (response == null)
                {
                    Trace(tracing, "{0}: RequestId={1} outcome=NoResponse http=200 durationMs={2}", TraceName,
                        requestId, watch.ElapsedMilliseconds);
                    throw new InvalidPluginExecutionException(string.Format(CultureInfo.InvariantCulture,
                        "The SMS app answered RequestId {0} with HTTP 200 but without a \"response\" string: check "
                        + "that \"url\" in the step's unsecure configuration is the app's /api/outbound.", requestId));
                }
                context.OutputParameters["response"] = response;
                Trace(tracing, "{0}: RequestId={1} outcome={2} http=200 durationMs={3}", TraceName, requestId,
                    StatusOf(response), watch.ElapsedMilliseconds);
                return;
            }

            var document = JsonText.Read<ErrorAnswer>(answer.Body);
            var error = (document == null ? null : document.Error) ?? new ErrorBody();
            Trace(tracing, "{0}: RequestId={1} outcome={2} http={3} durationMs={4}{5}", TraceName, requestId,
                Printable(string.IsNullOrEmpty(error.Code) ? "HTTP" + answer.Status : error.Code, 40), answer.Status,
                watch.ElapsedMilliseconds,
                answer.Status == 400 ? " fields=" + Names(error.Fields, field => field.Field) : "");
            throw new InvalidPluginExecutionException(Explain(answer, requestId, error));
        }

        // -- HTTP -------------------------------------------------------------------------------------------------

        private sealed class Answer
        {
            public int Status;
            public string Body;
            public string RetryAfter;
        }

        private Answer Post(string payload)
        {
            using (var cancel = new CancellationTokenSource(_timeout))
            using (var request = new HttpRequestMessage(HttpMethod.Post, _url))
            {
                request.Headers.TryAddWithoutValidation(FunctionKeyHeader, _functionKey);
                request.Headers.ConnectionClose = true; // sandbox guidance: no keep-alive
                request.Content = new StringContent(JsonText.Write(new OutboundRequest { Payload = payload }),
                    Encoding.UTF8, "application/json");
                try
                {
                    // the token bounds the whole exchange, body included (HttpCompletionOption.ResponseContentRead)
                    using (var response = Http.SendAsync(request, cancel.Token).GetAwaiter().GetResult())
                    {
                        var body = response.Content == null
                            ? ""
                            : response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
                        IEnumerable<string> values;
                        return new Answer
                        {
                            Status = (int)response.StatusCode,
                            Body = body,
                            RetryAfter = response.Headers.TryGetValues("Retry-After", out values)
                                ? string.Join(",", values)
                                : null,
                        };
                    }
                }
                catch (Exception) when (cancel.IsCancellationRequested)
                {
                    // however the handler reports the cancelled exchange (TaskCanceledException, an IOException while
                    // reading the body, ...), the cause is the timeout
                    throw new TimeoutException(string.Format(CultureInfo.InvariantCulture,
                        "did not answer within {0} s (timeoutSeconds)", _timeout.TotalSeconds));
                }
            }
        }

        private string Innermost(Exception exc)
        {
            while (exc.InnerException != null)
            {
                exc = exc.InnerException;
            }
            return Redact(exc.GetType().Name + ": " + exc.Message);
        }

        /// <summary>Defence in depth: nothing built from an exception or an answer may carry the key.</summary>
        private string Redact(string text)
        {
            if (string.IsNullOrEmpty(text))
            {
                return text;
            }
            if (!string.IsNullOrEmpty(_functionKey))
            {
                text = text.Replace(_functionKey, "[redacted]");
            }
            if (_url != null && _url.Query.Length > 1)
            {
                text = text.Replace(_url.Query, "?[redacted]");
            }
            return text;
        }

        /// <summary>A JSON number as the serializer gives it in an object member (never a JSON string "15").</summary>
        private static bool TryNumber(object value, out double number)
        {
            var isNumber = value is int || value is long || value is ulong || value is decimal || value is double
                           || value is float;
            number = isNumber ? Convert.ToDouble(value, CultureInfo.InvariantCulture) : double.NaN;
            return isNumber;
        }

        private static bool IsHeaderToken(string value)
        {
            foreach (var c in value)
            {
                if (c <= 0x20 || c >= 0x7f)
                {
                    return false;
                }
            }
            return true;
        }

        // -- what the app answered --------------------------------------------------------------------------------

        private string Explain(Answer answer, string requestId, ErrorBody error)
        {
            var code = Printable(error.Code ?? "", 40);
            var message = error.Message;
            var detail = string.IsNullOrEmpty(message) ? "" : ": " + Printable(Redact(message), 300);
            var after = string.IsNullOrEmpty(answer.RetryAfter)
                ? ""
                : ", Retry-After " + Printable(answer.RetryAfter, 20) + " s";
            switch (answer.Status)
            {
                case 400:
                    var fields = Fields(error);
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app refused the payload of RequestId {0} (HTTP 400 {1}){2}. Sending it again "
                        + "unchanged fails again.", requestId, code.Length > 0 ? code : "Bad Request",
                        fields.Length > 0 ? ": invalid fields: " + fields : detail);
                case 429:
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app is throttling requests (HTTP 429{0}); nothing was sent for RequestId {1}: retry "
                        + "later with the same RequestId.", after, requestId);
                case 503:
                    if (code == "Misconfigured")
                    {
                        return string.Format(CultureInfo.InvariantCulture,
                            "The SMS app is misconfigured (HTTP 503 Misconfigured, settings: {0}); nothing was sent "
                            + "for RequestId {1}: an operator must fix the app settings, then retry later.",
                            Names(error.Settings, setting => setting.Setting), requestId);
                    }
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app is temporarily unavailable (HTTP 503 {0}{1}){2}; retry later with the same "
                        + "RequestId {3}.", code.Length > 0 ? code : "Service Unavailable", after, detail, requestId);
                case 401:
                case 403:
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app refused the function key (HTTP {0}) for RequestId {1}: check \"functionKey\" in "
                        + "the step's secure configuration.", answer.Status, requestId);
                case 404:
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app has no such endpoint (HTTP 404) for RequestId {0}: check \"url\" in the step's "
                        + "unsecure configuration (it ends in /api/outbound).", requestId);
                case 413:
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app refused the payload of RequestId {0} as too large (HTTP 413){1}.", requestId,
                        detail);
                default:
                    if (answer.Status >= 300 && answer.Status < 400)
                    {
                        return string.Format(CultureInfo.InvariantCulture,
                            "The SMS app redirected RequestId {0} (HTTP {1}), which the plug-in does not follow: check "
                            + "\"url\" in the step's unsecure configuration (https://, the app's own host name).",
                            requestId, answer.Status);
                    }
                    if (answer.Status >= 500)
                    {
                        return string.Format(CultureInfo.InvariantCulture,
                            "The SMS app failed (HTTP {0}) for RequestId {1}: retry later with the same RequestId (the "
                            + "app never sends one RequestId twice).", answer.Status, requestId);
                    }
                    return string.Format(CultureInfo.InvariantCulture,
                        "The SMS app answered RequestId {0} with an unexpected HTTP {1}.", requestId, answer.Status);
            }
        }

        /// <summary>"To (message), ChannelDefinitionId (message)" from a 400's error.fields.</summary>
        private string Fields(ErrorBody error)
        {
            var parts = (error.Fields ?? new FieldProblem[0])
                .Where(item => item != null && !string.IsNullOrEmpty(item.Field))
                .Select(item => Printable(item.Field, 80) + (string.IsNullOrEmpty(item.Message)
                    ? ""
                    : " (" + Printable(Redact(item.Message), 200) + ")"));
            return string.Join(", ", parts);
        }

        /// <summary>Names only (traces, Misconfigured): error.fields[].field, error.settings[].setting.</summary>
        private static string Names<T>(T[] items, Func<T, string> name) where T : class
        {
            var names = (items ?? new T[0]).Where(item => item != null).Select(name)
                .Where(text => !string.IsNullOrEmpty(text)).Select(text => Printable(text, 80)).ToList();
            return names.Count > 0 ? string.Join(",", names) : "(none named)";
        }

        // -- tracing: RequestId, outcome and duration; never the key, a phone number or the message text -------------

        private static void Trace(ITracingService tracing, string format, params object[] args)
        {
            if (tracing != null)
            {
                tracing.Trace(format, args);
            }
        }

        private static string RequestIdOf(string payload)
        {
            var summary = JsonText.Read<MessageSummary>(payload);
            var requestId = summary == null ? null : summary.RequestId;
            return string.IsNullOrEmpty(requestId) ? "(unknown)" : Printable(requestId, 100);
        }

        private static string StatusOf(string response)
        {
            var summary = JsonText.Read<MessageSummary>(response);
            var status = summary == null ? null : summary.Status;
            return string.IsNullOrEmpty(status) ? "(no Status)" : Printable(status, 40);
        }

        private static string Printable(string text, int max)
        {
            var builder = new StringBuilder(Math.Min(text.Length, max + 3));
            foreach (var c in text)
            {
                if (builder.Length == max)
                {
                    builder.Append("...");
                    break;
                }
                builder.Append(char.IsControl(c) ? '?' : c);
            }
            return builder.ToString();
        }
    }
}
