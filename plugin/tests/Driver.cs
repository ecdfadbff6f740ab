// Test driver for the forwarding plug-in (used by tests/test_plugin.py; not part of the plug-in assembly).
//
//   mono Driver.exe <unsecure> <secure> <payload> [<payload> ...]
//
// Every argument is base64 of UTF-8 text, or "-" for null. One plug-in instance is built from the two configuration
// strings, as Dataverse does, and Execute runs once per payload, all payloads at the same time (instances are cached
// and shared between threads). One JSON line per payload, in argument order:
//   {"outcome": "ok"|"exception", "exceptionType", "message", "response", "durationMs", "traces": [...]}
//
//   mono Driver.exe --inspect
//
// prints what the plug-in assembly exposes: {"plugins": [{"type", "constructors": [...]}], "mutableStatics": [...],
// "mutablePluginFields": [...]} (IPlugin instances are cached and shared, so neither list may hold anything).
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Reflection;
using System.Text;
using System.Threading.Tasks;
using Microsoft.Xrm.Sdk;
using SmsChannel.Plugin;

namespace SmsChannel.Plugin.Tests
{
    public static class Driver
    {
        public static int Main(string[] args)
        {
            if (args.Length == 1 && args[0] == "--inspect")
            {
                Console.WriteLine(Inspect(typeof(OutboundForwarder).Assembly));
                return 0;
            }
            if (args.Length < 3)
            {
                Console.Error.WriteLine("usage: Driver.exe <unsecure> <secure> <payload> [<payload> ...]");
                return 2;
            }
            var plugin = new OutboundForwarder(Decode(args[0]), Decode(args[1]));
            var payloads = args.Skip(2).Select(Decode).ToArray();
            var runs = payloads.Select(payload => Task.Run(() => Run(plugin, payload))).ToArray();
            Task.WaitAll(runs);
            foreach (var run in runs)
            {
                Console.WriteLine(run.Result);
            }
            Console.Out.Flush();
            // mono sometimes takes many seconds to shut down after an HttpClient call (its runtime, not the
            // plug-in: Execute has returned); the results are out, so end the process now
            Environment.Exit(0);
            return 0;
        }

        private static string Run(IPlugin plugin, string payload)
        {
            var tracing = new Tracing();
            var context = new Context();
            if (payload != null)
            {
                context.InputParameters["payload"] = payload;
            }
            var services = new Services(context, tracing);
            var watch = Stopwatch.StartNew();
            string outcome = "ok", type = null, message = null;
            try
            {
                plugin.Execute(services);
            }
            catch (Exception exc)
            {
                outcome = "exception";
                type = exc.GetType().FullName;
                message = exc.Message;
            }
            object response;
            context.OutputParameters.TryGetValue("response", out response);
            var json = new StringBuilder("{");
            json.Append("\"outcome\":").Append(Quote(outcome));
            json.Append(",\"exceptionType\":").Append(Quote(type));
            json.Append(",\"message\":").Append(Quote(message));
            json.Append(",\"response\":").Append(Quote(response as string));
            json.Append(",\"durationMs\":").Append(watch.ElapsedMilliseconds.ToString(CultureInfo.InvariantCulture));
            json.Append(",\"traces\":[").Append(string.Join(",", tracing.Lines.Select(Quote))).Append("]}");
            return json.ToString();
        }

        private static string Inspect(Assembly assembly)
        {
            const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;
            var types = assembly.GetTypes();
            var plugins = types.Where(t => t.IsPublic && typeof(IPlugin).IsAssignableFrom(t)).Select(t =>
                "{\"type\":" + Quote(t.FullName) + ",\"constructors\":[" + string.Join(",",
                    t.GetConstructors().Select(c => Quote(string.Join(",",
                        c.GetParameters().Select(p => p.ParameterType.FullName)))))
                + "]}");
            var mutableStatics = types.SelectMany(t => t.GetFields(all | BindingFlags.Static))
                .Where(f => !f.IsInitOnly && !f.IsLiteral && !IsCompilerGenerated(f)) // lambda caches are not state
                .Select(f => Quote(f.DeclaringType.FullName + "." + f.Name));
            var mutablePluginFields = types.Where(t => typeof(IPlugin).IsAssignableFrom(t))
                .SelectMany(t => t.GetFields(all | BindingFlags.Instance))
                .Where(f => !f.IsInitOnly)
                .Select(f => Quote(f.DeclaringType.FullName + "." + f.Name));
            return "{\"plugins\":[" + string.Join(",", plugins) + "],\"mutableStatics\":["
                + string.Join(",", mutableStatics) + "],\"mutablePluginFields\":["
                + string.Join(",", mutablePluginFields) + "]}";
        }

        private static bool IsCompilerGenerated(FieldInfo field)
        {
            return field.Name.Contains("<") || field.DeclaringType.FullName.Contains("<");
        }

        private static string Decode(string arg)
        {
            return arg == "-" ? null : Encoding.UTF8.GetString(Convert.FromBase64String(arg));
        }

        private static string Quote(string text)
        {
            if (text == null)
            {
                return "null";
            }
            var builder = new StringBuilder("\"");
            foreach (var c in text)
            {
                if (c == '"' || c == '\\')
                {
                    builder.Append('\\').Append(c);
                }
                else if (c < 0x20 || c > 0x7e)
                {
                    builder.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                }
                else
                {
                    builder.Append(c);
                }
            }
            return builder.Append('"').ToString();
        }

        private sealed class Tracing : ITracingService
        {
            public readonly List<string> Lines = new List<string>();

            public void Trace(string format, params object[] args)
            {
                var line = args == null || args.Length == 0
                    ? format
                    : string.Format(CultureInfo.InvariantCulture, format, args);
                lock (Lines)
                {
                    Lines.Add(line);
                }
            }
        }

        private sealed class Services : IServiceProvider
        {
            private readonly IPluginExecutionContext _context;
            private readonly ITracingService _tracing;

            public Services(IPluginExecutionContext context, ITracingService tracing)
            {
                _context = context;
                _tracing = tracing;
            }

            public object GetService(Type serviceType)
            {
                if (serviceType == typeof(IPluginExecutionContext))
                {
                    return _context;
                }
                if (serviceType == typeof(ITracingService))
                {
                    return _tracing;
                }
                // what the plug-in may ask for: nothing else is offered, so asking fails the test visibly
                throw new InvalidOperationException(
                    "the plug-in asked for an unexpected service: " + serviceType.FullName);
            }
        }

        /// <summary>A synchronous (Mode 0) PostOperation (Stage 40) step on an unbound custom API.</summary>
        private sealed class Context : IPluginExecutionContext
        {
            private readonly ParameterCollection _input = new ParameterCollection();
            private readonly ParameterCollection _output = new ParameterCollection();
            private readonly ParameterCollection _shared = new ParameterCollection();

            public int Mode { get { return 0; } }
            public int IsolationMode { get { return 2; } }
            public int Depth { get { return 1; } }
            public string MessageName { get { return "contoso_OutboundSms"; } }
            public string PrimaryEntityName { get { return "none"; } }
            public Guid? RequestId { get { return Guid.NewGuid(); } }
            public string SecondaryEntityName { get { return "none"; } }
            public ParameterCollection InputParameters { get { return _input; } }
            public ParameterCollection OutputParameters { get { return _output; } }
            public ParameterCollection SharedVariables { get { return _shared; } }
            public Guid UserId { get { return Guid.Empty; } }
            public Guid InitiatingUserId { get { return Guid.Empty; } }
            public Guid BusinessUnitId { get { return Guid.Empty; } }
            public Guid OrganizationId { get { return Guid.Empty; } }
            public string OrganizationName { get { return "test"; } }
            public Guid PrimaryEntityId { get { return Guid.Empty; } }
            public Guid CorrelationId { get { return Guid.Empty; } }
            public bool IsExecutingOffline { get { return false; } }
            public bool IsOfflinePlayback { get { return false; } }
            public bool IsInTransaction { get { return true; } }
            public Guid OperationId { get { return Guid.Empty; } }
            public DateTime OperationCreatedOn { get { return DateTime.UtcNow; } }
            public int Stage { get { return 40; } }
            public IPluginExecutionContext ParentContext { get { return null; } }
        }
    }
}
