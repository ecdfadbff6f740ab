// Reference stubs of the Microsoft.Xrm.Sdk types the plug-ins use, for compiling and testing it with
// mono where the real assembly (NuGet Microsoft.CrmSdk.CoreAssemblies) is not available. NOT part of the plug-in:
// the real build (SmsChannel.Plugin.csproj) excludes this folder and references the real SDK.
//
// Namespaces, type names, member names and signatures follow the real SDK (Microsoft.Xrm.Sdk.dll 9.0.x), with
// these deliberate simplifications:
//   - members no test needs are left out (IExecutionContext's PreEntityImages, PostEntityImages and
//     OwningExtension, whose types would drag in Entity and EntityReference; the newer IPluginExecutionContext2..7;
//     IOrganizationService's Create, Retrieve, Update, Delete, Associate, Disassociate and RetrieveMultiple, which
//     would drag in Entity, ColumnSet, QueryBase and Relationship: the stub has Execute only);
//   - OrganizationRequest and OrganizationResponse are plain classes here: the real ones are [DataContract]s
//     implementing IExtensibleDataObject (ExtensionData), which only the SDK's own WCF client uses;
//   - the real InvalidPluginExecutionException derives from
//     System.ServiceModel.FaultException<OrganizationServiceFault>; here it derives from Exception, so the stubs
//     need no System.ServiceModel (which the Debian mono packages used by the tests do not include);
//   - the real DataCollection<TKey, TValue> also implements ICollection/IDictionary-style helpers the plug-in never
//     calls (AddRange, SetItem, ...).
using System;
using System.Collections;
using System.Collections.Generic;

namespace Microsoft.Xrm.Sdk
{
    /// <summary>Same as the SDK: the one interface every plug-in implements.</summary>
    public interface IPlugin
    {
        void Execute(IServiceProvider serviceProvider);
    }

    /// <summary>Same as the SDK: writes to the Plug-in Trace Log.</summary>
    public interface ITracingService
    {
        void Trace(string format, params object[] args);
    }

    /// <summary>Same as the SDK: the execution context shared by plug-ins and workflow activities.</summary>
    public interface IExecutionContext
    {
        int Mode { get; }
        int IsolationMode { get; }
        int Depth { get; }
        string MessageName { get; }
        string PrimaryEntityName { get; }
        Guid? RequestId { get; }
        string SecondaryEntityName { get; }
        ParameterCollection InputParameters { get; }
        ParameterCollection OutputParameters { get; }
        ParameterCollection SharedVariables { get; }
        Guid UserId { get; }
        Guid InitiatingUserId { get; }
        Guid BusinessUnitId { get; }
        Guid OrganizationId { get; }
        string OrganizationName { get; }
        Guid PrimaryEntityId { get; }
        Guid CorrelationId { get; }
        bool IsExecutingOffline { get; }
        bool IsOfflinePlayback { get; }
        bool IsInTransaction { get; }
        Guid OperationId { get; }
        DateTime OperationCreatedOn { get; }
    }

    /// <summary>Same as the SDK: the plug-in's view of the execution context.</summary>
    public interface IPluginExecutionContext : IExecutionContext
    {
        int Stage { get; }
        IPluginExecutionContext ParentContext { get; }
    }

    /// <summary>Same as the SDK: a keyed collection (base of ParameterCollection, AttributeCollection, ...).</summary>
    public abstract class DataCollection<TKey, TValue> : IEnumerable<KeyValuePair<TKey, TValue>>
    {
        private readonly Dictionary<TKey, TValue> _items = new Dictionary<TKey, TValue>();

        public TValue this[TKey key]
        {
            get { return _items[key]; }
            set { _items[key] = value; }
        }

        public int Count { get { return _items.Count; } }

        public ICollection<TKey> Keys { get { return _items.Keys; } }

        public ICollection<TValue> Values { get { return _items.Values; } }

        public void Add(TKey key, TValue value) { _items.Add(key, value); }

        public void Add(KeyValuePair<TKey, TValue> item) { _items.Add(item.Key, item.Value); }

        public bool Contains(TKey key) { return _items.ContainsKey(key); }

        public bool ContainsKey(TKey key) { return _items.ContainsKey(key); }

        public bool TryGetValue(TKey key, out TValue value) { return _items.TryGetValue(key, out value); }

        public bool Remove(TKey key) { return _items.Remove(key); }

        public void Clear() { _items.Clear(); }

        public IEnumerator<KeyValuePair<TKey, TValue>> GetEnumerator() { return _items.GetEnumerator(); }

        IEnumerator IEnumerable.GetEnumerator() { return GetEnumerator(); }
    }

    /// <summary>Same as the SDK: Input/OutputParameters, SharedVariables, a request's Parameters, Results.</summary>
    public sealed class ParameterCollection : DataCollection<string, object>
    {
    }

    /// <summary>Same as the SDK: the service provider's factory of organization services.</summary>
    public interface IOrganizationServiceFactory
    {
        /// <summary>null: the SYSTEM user; otherwise the systemuser with that id (e.g. context.UserId).</summary>
        IOrganizationService CreateOrganizationService(Guid? userId);
    }

    /// <summary>The SDK's organization service, Execute only (see the note at the top of the file).</summary>
    public interface IOrganizationService
    {
        OrganizationResponse Execute(OrganizationRequest request);
    }

    /// <summary>Same members as the SDK: a message by name, with its parameters.</summary>
    public class OrganizationRequest
    {
        private ParameterCollection _parameters;

        public OrganizationRequest()
        {
        }

        public OrganizationRequest(string requestName)
        {
            RequestName = requestName;
        }

        public string RequestName { get; set; }

        public object this[string parameterName]
        {
            get { return Parameters[parameterName]; }
            set { Parameters[parameterName] = value; }
        }

        public ParameterCollection Parameters
        {
            get { return _parameters ?? (_parameters = new ParameterCollection()); }
            set { _parameters = value; }
        }

        public Guid? RequestId { get; set; }
    }

    /// <summary>Same members as the SDK: a message's results by name.</summary>
    public class OrganizationResponse
    {
        private ParameterCollection _results;

        public string ResponseName { get; set; }

        public object this[string parameterName]
        {
            get { return Results[parameterName]; }
            set { Results[parameterName] = value; }
        }

        public ParameterCollection Results
        {
            get { return _results ?? (_results = new ParameterCollection()); }
            set { _results = value; }
        }
    }

    /// <summary>Same as the SDK: the status carried by an InvalidPluginExecutionException.</summary>
    public enum OperationStatus
    {
        Failed = 0,
        Canceled = 1,
        Retry = 2,
        Suspended = 3,
        Succeeded = 4,
    }

    /// <summary>
    /// The SDK's exception for a plug-in to fail the operation with a message shown to the caller. Constructors as in
    /// the SDK; see the note at the top of the file about the base class.
    /// </summary>
    [Serializable]
    public class InvalidPluginExecutionException : Exception
    {
        public InvalidPluginExecutionException() : this(OperationStatus.Failed, string.Empty) { }

        public InvalidPluginExecutionException(string message) : this(OperationStatus.Failed, message) { }

        public InvalidPluginExecutionException(string message, Exception exception) : base(message, exception)
        {
            Status = OperationStatus.Failed;
        }

        public InvalidPluginExecutionException(OperationStatus status, string message) : base(message)
        {
            Status = status;
        }

        public InvalidPluginExecutionException(OperationStatus status, int errorCode, string message) : base(message)
        {
            Status = status;
        }

        public OperationStatus Status { get; private set; }
    }
}
