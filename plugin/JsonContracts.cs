// The JSON the plug-ins read and write, as data contracts for the base class library's DataContractJsonSerializer
// (System.Runtime.Serialization.Json): no JSON library to ship and no parser of our own, only a check that a text
// is one whole object, which the serializer does not make (JsonText.IsOneObject). See plugin/README.md.
//
// The Dataverse sandbox runs plug-ins in partial trust, where the serializer only fills public types through public
// members with a public parameterless constructor: every contract here is public for that reason alone
// (tests/test_plugin.py checks it). Nothing outside the plug-ins uses them.
using System;
using System.IO;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;

namespace SmsChannel.Plugin.Wire
{
    /// <summary>
    /// The forwarder's unsecure configuration: {"url": "https://...", "timeoutSeconds": 15}. Both members are
    /// <see cref="object"/> because the serializer turns "15" into 15 and 5 into "5" for typed members, and a
    /// configuration of the wrong JSON type must be refused by name: here a JSON string stays a string and a JSON
    /// number becomes an int, long, decimal or double.
    /// </summary>
    [DataContract]
    public sealed class UnsecureConfiguration
    {
        [DataMember(Name = "url")] public object Url;
        [DataMember(Name = "timeoutSeconds")] public object TimeoutSeconds;
    }

    /// <summary>The secure configuration {"functionKey": "..."}; a non-string key counts as missing.</summary>
    [DataContract]
    public sealed class SecureConfiguration
    {
        [DataMember(Name = "functionKey")] public object FunctionKey;
    }

    /// <summary>What the forwarder sends: {"payload": "&lt;the custom API's payload, unchanged&gt;"}.</summary>
    [DataContract]
    public sealed class OutboundRequest
    {
        [DataMember(Name = "payload")] public string Payload;
    }

    /// <summary>The app's 200 answer: {"response": "..."}; object, so that only a JSON string is taken.</summary>
    [DataContract]
    public sealed class OutboundAnswer
    {
        [DataMember(Name = "response")] public object Response;
    }

    /// <summary>The app's error answer {"error": {"code", "message", "fields", "settings"}} (contracts/http).</summary>
    [DataContract]
    public sealed class ErrorAnswer
    {
        [DataMember(Name = "error")] public ErrorBody Error;
    }

    [DataContract]
    public sealed class ErrorBody
    {
        [DataMember(Name = "code")] public string Code;
        [DataMember(Name = "message")] public string Message;
        /// <summary>A 400's invalid fields.</summary>
        [DataMember(Name = "fields")] public FieldProblem[] Fields;
        /// <summary>A 503 Misconfigured's app settings to fix.</summary>
        [DataMember(Name = "settings")] public SettingProblem[] Settings;
    }

    [DataContract]
    public sealed class FieldProblem
    {
        [DataMember(Name = "field")] public string Field;
        [DataMember(Name = "message")] public string Message;
    }

    [DataContract]
    public sealed class SettingProblem
    {
        [DataMember(Name = "setting")] public string Setting;
    }

    /// <summary>
    /// The two members the forwarder traces: the payload's RequestId and the app's response's Status (every other
    /// member, phone numbers and text included, is skipped unread).
    /// </summary>
    [DataContract]
    public sealed class MessageSummary
    {
        [DataMember(Name = "RequestId")] public string RequestId;
        [DataMember(Name = "Status")] public string Status;
    }

    /// <summary>DataContractJsonSerializer, behind a check that the text is one whole JSON object.</summary>
    internal static class JsonText
    {
        /// <summary>Deeper documents are refused (the serializer's own limit is int.MaxValue).</summary>
        private const int MaxDepth = 64;

        /// <summary>
        /// The JSON object in <paramref name="text"/> as a T, or null when the text is not one: not JSON, not one
        /// whole object, or with a member the serializer cannot put into its declared type.
        /// </summary>
        public static T Read<T>(string text) where T : class
        {
            if (!IsOneObject(text))
            {
                return null;
            }
            try
            {
                using (var stream = new MemoryStream(Encoding.UTF8.GetBytes(text), false))
                {
                    return new DataContractJsonSerializer(typeof(T)).ReadObject(stream) as T;
                }
            }
            catch (Exception)
            {
                // The serializer reports unreadable input through several exception types (SerializationException;
                // under mono a TargetInvocationException for a member of the wrong JSON type; XmlException from the
                // reader): each one only means "not the JSON expected", which every caller handles as null.
                return null;
            }
        }

        /// <summary>
        /// Whether the text is one object: "{", brackets balanced outside strings, nothing after the closing "}".
        /// The serializer does not check this: its reader (XmlJsonReader, the same source in .NET Framework and
        /// mono) closes whatever is open at the end of the text and stops after the first object, so it reads
        /// {"url": "..." (cut off), {"url": "...", (cut off) and {"url": "..."}} as {"url": "..."}; it also reads a
        /// top-level [...] as an object with no members. The serializer checks everything else (tokens, strings).
        /// </summary>
        private static bool IsOneObject(string text)
        {
            var start = text == null ? -1 : text.IndexOf('{');
            if (start < 0 || !string.IsNullOrWhiteSpace(text.Substring(0, start)))
            {
                return false;
            }
            var depth = 0;
            var inString = false;
            for (var at = start; at < text.Length; at++)
            {
                var c = text[at];
                if (inString)
                {
                    at += c == '\\' ? 1 : 0; // the escaped character cannot end the string
                    inString = c != '"';
                }
                else if (c == '"')
                {
                    inString = true;
                }
                else if (c == '{' || c == '[')
                {
                    if (++depth > MaxDepth)
                    {
                        return false;
                    }
                }
                else if ((c == '}' || c == ']') && --depth == 0)
                {
                    return string.IsNullOrWhiteSpace(text.Substring(at + 1));
                }
            }
            return false;
        }

        /// <summary>
        /// <paramref name="value"/> as JSON text, strings escaped by the serializer (quotes, backslashes, control
        /// characters and surrogates as \u escapes, "/" as "\/"): any JSON reader gets the same strings back.
        /// </summary>
        public static string Write<T>(T value)
        {
            using (var stream = new MemoryStream())
            {
                new DataContractJsonSerializer(typeof(T)).WriteObject(stream, value);
                return Encoding.UTF8.GetString(stream.ToArray());
            }
        }
    }
}
