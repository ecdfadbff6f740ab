// Test driver for the plug-ins (used by tests/test_plugin.py; not part of the plug-in assembly).
//
//   mono Driver.exe <unsecure> <secure> <payload> [<payload> ...]
//
// runs the forwarder. Every argument is base64 of UTF-8 text, or "-" for null. One plug-in instance is built from
// the two configuration strings, as Dataverse does, and Execute runs once per payload (InputParameters["payload"]),
// all payloads at the same time (instances are cached and shared between threads). One JSON line per payload, in
// argument order:
//   {"outcome": "ok"|"exception", "exceptionType", "message", "outputs": {name: string}, "durationMs",
//    "traces": [...], "calls": [...]}
//
//   mono Driver.exe --relay <type> <parameter> <responseMessage> <failure> <payload> [<payload> ...]
//
// runs the main-operation plug-in <type> (full name, built with its parameterless constructor) the same way, with
// InputParameters[<parameter>] = each payload (not set for "-") and an IOrganizationServiceFactory whose services
// record every Execute: "calls": [{"userId": null (system) or the id, "request", "parameters": [{"name", "type",
// "value"}]}]. The base action answers Results["responseMessage"] = <responseMessage> (none for "-"), or, when
// <failure> is not "-", throws a SimulatedFault with that message. <type> and <parameter> are plain text.
//
//   mono Driver.exe --inspect
//
// prints what the plug-in assembly exposes: {"plugins": [{"type", "constructors": [...]}], "mutableStatics": [...],
// "mutablePluginFields": [...], "dataContracts": [{"type", "visible", "publicConstructor", "nonPublicMembers"}]}
// (IPlugin instances are cached and shared, so neither mutable list may hold anything; the sandbox's partial trust
// needs every data contract visible, with a public parameterless constructor and public members only).
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
            Task<string>[] runs;
            if (args.Length >= 6 && args[0] == "--relay")
            {
                var type = typeof(OutboundForwarder).Assembly.GetType(args[1], true);
                var relay = (IPlugin)Activator.CreateInstance(type);
                string parameter = args[2], responseMessage = Decode(args[3]), failure = Decode(args[4]);
                runs = args.Skip(5).Select(Decode).Select(payload => Task.Run(() => Run(relay, parameter, payload,
                    new Factory(responseMessage, failure), 30, "new_" + Guid.NewGuid().ToString("N")))).ToArray();
            }
            else if (args.Length >= 3 && !args[0].StartsWith("--", StringComparison.Ordinal))
            {
                var plugin = new OutboundForwarder(Decode(args[0]), Decode(args[1]));
                runs = args.Skip(2).Select(Decode).Select(payload => Task.Run(() => Run(plugin, "payload", payload,
                    null, 40, "contoso_OutboundSms"))).ToArray();
            }
            else
            {
                Console.Error.WriteLine("usage: Driver.exe <unsecure> <secure> <payload> [<payload> ...] | --relay "
                    + "<type> <parameter> <responseMessage> <failure> <payload> [<payload> ...] | --inspect");
                return 2;
            }
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

        private static string Run(IPlugin plugin, string parameter, string payload, Factory factory, int stage,
            string messageName)
        {
            var tracing = new Tracing();
            var context = new Context(stage, messageName);
            if (payload != null)
            {
                context.InputParameters[parameter] = payload;
            }
            var services = new Services(context, tracing, factory);
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
            var json = new StringBuilder("{");
            json.Append("\"outcome\":").Append(Quote(outcome));
            json.Append(",\"exceptionType\":").Append(Quote(type));
            json.Append(",\"message\":").Append(Quote(message));
            json.Append(",\"outputs\":{").Append(string.Join(",", context.OutputParameters.Select(output =>
                Quote(output.Key) + ":" + Quote(output.Value as string ?? "<" + TypeOf(output.Value) + ">"))));
            json.Append("},\"durationMs\":").Append(watch.ElapsedMilliseconds.ToString(CultureInfo.InvariantCulture));
            json.Append(",\"traces\":[").Append(string.Join(",", tracing.Lines.Select(Quote)));
            json.Append("],\"calls\":[").Append(factory == null ? "" : string.Join(",", factory.Calls)).Append("]}");
            return json.ToString();
        }

        private static string TypeOf(object value)
        {
            return value == null ? "null" : value.GetType().FullName;
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
            var dataContracts = types.Where(t => HasAttribute(t, "DataContractAttribute")).Select(t =>
                "{\"type\":" + Quote(t.FullName) + ",\"visible\":" + (t.IsVisible ? "true" : "false")
                + ",\"publicConstructor\":" + (t.GetConstructor(Type.EmptyTypes) != null ? "true" : "false")
                + ",\"nonPublicMembers\":[" + string.Join(",", t.GetMembers(all | BindingFlags.Instance)
                    .Where(m => HasAttribute(m, "DataMemberAttribute") && !IsPublic(m)).Select(m => Quote(m.Name)))
                + "]}");
            return "{\"plugins\":[" + string.Join(",", plugins) + "],\"mutableStatics\":["
                + string.Join(",", mutableStatics) + "],\"mutablePluginFields\":["
                + string.Join(",", mutablePluginFields) + "],\"dataContracts\":["
                + string.Join(",", dataContracts) + "]}";
        }

        // by name: the driver is compiled without a reference to System.Runtime.Serialization
        private static bool HasAttribute(MemberInfo member, string name)
        {
            return member.GetCustomAttributes(false).Any(a => a.GetType().FullName == "System.Runtime.Serialization."
                + name);
        }

        private static bool IsPublic(MemberInfo member)
        {
            var field = member as FieldInfo;
            if (field != null)
            {
                return field.IsPublic;
            }
            var property = member as PropertyInfo;
            return property != null && property.GetGetMethod() != null && property.GetSetMethod() != null;
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
            private readonly IOrganizationServiceFactory _factory;

            public Services(IPluginExecutionContext context, ITracingService tracing,
                IOrganizationServiceFactory factory)
            {
                _context = context;
                _tracing = tracing;
                _factory = factory;
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
                if (serviceType == typeof(IOrganizationServiceFactory) && _factory != null)
                {
                    return _factory;
                }
                // what the plug-in may ask for: nothing else is offered, so asking fails the test visibly
                throw new InvalidOperationException(
                    "the plug-in asked for an unexpected service: " + serviceType.FullName);
            }
        }

        /// <summary>
        /// Stands for the FaultException&lt;OrganizationServiceFault&gt; a failed Execute throws in Dataverse (the
        /// stubs have no System.ServiceModel).
        /// </summary>
        [Serializable]
        public sealed class SimulatedFault : Exception
        {
            public SimulatedFault(string message) : base(message)
            {
            }
        }

        /// <summary>Organization services that record each Execute and answer as the base action would.</summary>
        private sealed class Factory : IOrganizationServiceFactory
        {
            private readonly string _responseMessage;
            private readonly string _failure;
            public readonly List<string> Calls = new List<string>();

            public Factory(string responseMessage, string failure)
            {
                _responseMessage = responseMessage;
                _failure = failure;
            }

            public IOrganizationService CreateOrganizationService(Guid? userId)
            {
                return new Service(this, userId);
            }

            private sealed class Service : IOrganizationService
            {
                private readonly Factory _factory;
                private readonly Guid? _userId;

                public Service(Factory factory, Guid? userId)
                {
                    _factory = factory;
                    _userId = userId;
                }

                public OrganizationResponse Execute(OrganizationRequest request)
                {
                    var parameters = request.Parameters.Select(p => "{\"name\":" + Quote(p.Key) + ",\"type\":"
                        + Quote(TypeOf(p.Value)) + ",\"value\":" + Quote(p.Value as string) + "}");
                    lock (_factory.Calls)
                    {
                        _factory.Calls.Add("{\"userId\":" + Quote(_userId.HasValue ? _userId.Value.ToString() : null)
                            + ",\"request\":" + Quote(request.RequestName) + ",\"parameters\":["
                            + string.Join(",", parameters) + "]}");
                    }
                    if (_factory._failure != null)
                    {
                        throw new SimulatedFault(_factory._failure);
                    }
                    var response = new OrganizationResponse { ResponseName = request.RequestName };
                    if (_factory._responseMessage != null)
                    {
                        response.Results["responseMessage"] = _factory._responseMessage;
                    }
                    return response;
                }
            }
        }

        /// <summary>
        /// A synchronous (Mode 0) step on an unbound custom API: PostOperation (Stage 40) for the forwarder, the main
        /// operation (Stage 30) for the relays, whose custom API's name differs per environment.
        /// </summary>
        private sealed class Context : IPluginExecutionContext
        {
            private readonly ParameterCollection _input = new ParameterCollection();
            private readonly ParameterCollection _output = new ParameterCollection();
            private readonly ParameterCollection _shared = new ParameterCollection();
            private readonly int _stage;
            private readonly string _messageName;

            public Context(int stage, string messageName)
            {
                _stage = stage;
                _messageName = messageName;
            }

            public int Mode { get { return 0; } }
            public int IsolationMode { get { return 2; } }
            public int Depth { get { return 1; } }
            public string MessageName { get { return _messageName; } }
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
            public int Stage { get { return _stage; } }
            public IPluginExecutionContext ParentContext { get { return null; } }
        }
    }
}
