"""The registry of diagnostic codes: one place, grouped by stage, never reused.

AGW1xx YAML and files, AGW2xx schema, AGW3xx references and the graph,
AGW4xx Cedar, AGW5xx templates and pipelines, AGW9xx internal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Code:
    """A stable diagnostic code with its default severity and a one-line summary."""

    id: str
    severity: Severity
    summary: str


def _error(id: str, summary: str) -> Code:
    return Code(id, Severity.ERROR, summary)


def _warning(id: str, summary: str) -> Code:
    return Code(id, Severity.WARNING, summary)


# AGW1xx: reading files and YAML syntax
YAML_SYNTAX = _error("AGW101", "YAML syntax error")
YAML_TAB = _error("AGW102", "tab character in indentation")
YAML_DUPLICATE_KEY = _error("AGW103", "duplicate mapping key")
FILE_EMPTY = _error("AGW104", "file is empty")
FILE_MISSING = _error("AGW105", "file not found")
INCLUDE_CYCLE = _error("AGW106", "include cycle")
FILE_ENCODING = _error("AGW107", "file is not UTF-8")
YAML_FEATURE = _error("AGW108", "unsupported YAML feature")
INCLUDE_OUTSIDE = _error("AGW109", "include points outside the gateway directory")
FILE_TOO_LARGE = _error("AGW110", "file is too large")
YAML_SURROGATE = _error("AGW111", "string holds a UTF-16 surrogate escape, not a character")

# AGW2xx: shape of the documents
SCHEMA_NOT_MAPPING = _error("AGW201", "document is not a mapping")
SCHEMA_UNKNOWN_KEY = _error("AGW202", "unknown key")
SCHEMA_MISSING = _error("AGW203", "required field missing")
SCHEMA_TYPE = _error("AGW204", "wrong type")
SCHEMA_VALUE = _error("AGW205", "invalid value")
SCHEMA_VERSION = _error("AGW206", "unsupported config version")
SCHEMA_ROUTE_TARGET = _error("AGW207", "route needs exactly one target")
SCHEMA_NAME = _error("AGW208", "invalid name")
SCHEMA_SHA256 = _error("AGW209", "invalid sha256 digest")
SCHEMA_KEY_SECRET = _error("AGW210", "key needs exactly one of secret or sha256")
SCHEMA_INCLUDE_SECTION = _error("AGW211", "section not allowed in an included file")
SCHEMA_ISSUER_JWKS = _error("AGW212", "issuer needs exactly one of jwks_url, jwks_file and "
                            "jwks")

# AGW3xx: references, names and the graph
REF_PROVIDER = _error("AGW301", "unknown provider")
REF_DEPLOYMENT = _error("AGW302", "unknown deployment")
REF_GROUP = _error("AGW303", "unknown group")
REF_TEAM = _error("AGW304", "unknown team")
REF_PIPELINE = _error("AGW305", "unknown pipeline")
FALLBACK_CYCLE = _error("AGW306", "fallback cycle")
DUPLICATE_NAME = _error("AGW307", "name defined twice")
UNREACHABLE_DEPLOYMENT = _warning("AGW308", "deployment is not reachable from any route")
ENV_UNSET = _warning("AGW309", "environment variable is not set")
LITERAL_SECRET = _warning("AGW310", "literal secret in config")
GROUP_DUPLICATE_MEMBER = _error("AGW311", "group lists a member twice")
OUTPUT_EXCEEDS_CONTEXT = _error("AGW312", "max_output_tokens exceeds context_window")
PROVIDER_FIELD = _error("AGW313", "provider is missing a field its type needs")
PROVIDER_NO_ADAPTER = _warning("AGW314", "provider type has no adapter in this version")
DUPLICATE_KEY_SECRET = _error("AGW315", "two keys share one secret")
NO_ROUTES = _warning("AGW316", "no routes defined")
ENV_SYNTAX = _error("AGW317", "malformed ${ENV} reference")
EMPTY_GROUP = _error("AGW318", "group has no members")
PROVIDER_FIELD_NOT_APPLICABLE = _error("AGW319", "field does not apply to this provider type")
GROUP_WEIGHT_NOT_MEMBER = _error("AGW320", "weight given for a deployment that is not a member")
NO_EMBEDDINGS_API = _error("AGW321", "provider type has no embeddings API")
PROVIDER_EXTRA_MISSING = _warning("AGW322", "provider type needs an extra that is not installed")
REF_ROUTE = _error("AGW323", "unknown route")
SERVE_INVALID = _error("AGW324", "serve: block cannot start its deployment's server")
SERVE_ADDRESS_TAKEN = _error("AGW325", "two served deployments listen on one address")
# A warning, not an error: revoking a key (deleting it) must not be refused because an
# approval step still names it; a name that is not defined matches nobody.
APPROVER_UNKNOWN = _warning("AGW326", "approvers name a key or team that is not defined")
BASE_URL_OPERATION = _warning("AGW327", "base_url names an operation, not the API's root")
GROUP_MIXED_KINDS = _warning("AGW328", "group mixes deployments of different kinds")
WEIGHTS_UNUSED = _warning("AGW329", "weights given to a group whose strategy does not read them")
BASE_URL_USER_INFO_AND_KEY = _error("AGW330", "base_url user info and an api_key: two "
                                    "Authorization headers")
PASS_PARAM_READ = _error("AGW331", "pass_params lists a field the gateway reads itself")
PASS_PARAMS_NOT_CHAT = _error("AGW332", "pass_params on a deployment that does not serve chat")
MCP_LITERAL_SECRET = _error("AGW333", "MCP server header holds a literal credential")
MCP_TOOL_TWICE = _error("AGW334", "MCP server's tools list a tool twice")
MCP_NO_TOOLS = _warning("AGW335", "MCP server's tools allow none")
AGENT_URL = _error("AGW336", "agent URL cannot be called")
GUARDRAIL_PATTERN = _error("AGW337", "guardrail pattern is not a usable regular expression")
GUARDRAIL_ENTITY = _error("AGW338", "unknown PII entity")
REF_GUARDRAIL = _error("AGW339", "unknown guardrail")
GUARDRAIL_LITERAL_SECRET = _error("AGW340", "guardrail webhook header holds a literal credential")
GUARDRAIL_URL = _error("AGW341", "guardrail webhook URL cannot be called")
GUARDRAIL_FIELD = _error("AGW342", "guardrail field missing, or not one its kind takes")
GUARDRAIL_ROUTE = _error("AGW343", "route lists guardrails it cannot apply")
SEMANTIC_NOT_EMBEDDINGS = _error("AGW344", "semantic cache names a route that does not "
                                 "serve embeddings")
SEMANTIC_NOT_CHAT = _error("AGW345", "semantic cache on a route that does not serve chat")
SEMANTIC_KEY_NO_EMBEDDINGS = _warning("AGW346", "key may call a route with a semantic cache "
                                      "but not the route that embeds for it")
REF_MCP_SERVER = _error("AGW347", "unknown MCP server")
KEY_EXPIRES = _warning("AGW348", "key has expired, or expires within 7 days")
PREVIOUS_SECRET_RETIRED = _warning("AGW349", "key's previous secret is past its until")
MCP_TRANSPORT = _error("AGW350", "MCP server needs exactly one of url and command")
MCP_COMMAND_NOT_FOUND = _warning("AGW351", "MCP server's command is not on PATH")
MCP_OTHER_TRANSPORT = _error("AGW352", "MCP server field is for the other transport")
MCP_LITERAL_ENV_SECRET = _error("AGW353", "MCP server env holds a literal credential")
KIND_NOT_SERVED = _error("AGW354", "provider type does not serve the deployment's kind")
REF_PASSTHROUGH = _error("AGW355", "unknown pass-through")
PASSTHROUGH_PROVIDER = _error("AGW356", "pass-through to a provider type it cannot authenticate "
                              "a raw request for")
PASSTHROUGH_PATH = _error("AGW357", "pass-through path is not a usable glob")
ISSUER_JWKS_URL = _error("AGW358", "issuer's jwks_url cannot be fetched safely")
ISSUER_JWKS_FILE = _error("AGW359", "issuer's jwks_file holds no usable public key")
DUPLICATE_ISSUER = _error("AGW360", "two issuers accept the same iss")
ISSUER_JWKS_INLINE = _error("AGW361", "issuer's inline jwks holds a key it cannot verify with")
BASE_URL_VERSIONED = _error("AGW370", "base_url ends in an API version its adapter appends")

# AGW4xx: Cedar policies
CEDAR_SYNTAX = _error("AGW401", "Cedar syntax error")
CEDAR_MISSING_ID = _error("AGW402", "policy has no @id annotation")
CEDAR_DUPLICATE_ID = _error("AGW403", "policy @id used twice")
CEDAR_PRIORITY = _error("AGW404", "@priority is not an integer")
CEDAR_UNKNOWN_TYPE = _error("AGW405", "unknown entity type")
CEDAR_UNKNOWN_ATTRIBUTE = _error("AGW406", "unknown attribute or context field")
CEDAR_ACTION_SCOPE = _error("AGW407", "action does not apply to this principal or resource")
CEDAR_TYPE = _error("AGW408", "type error in a policy")
CEDAR_UNKNOWN_ENTITY = _error("AGW409", "policy names an entity the config does not define")
CEDAR_INVALID = _error("AGW410", "policy does not validate against the schema")
CEDAR_TEMPLATE = _error("AGW411", "policy templates are not supported")
CEDAR_NO_PERMIT = _warning("AGW412", "no policy permits an action")
CEDAR_KEY_EQUALS = _error("AGW413", "forbid matches keys only (== or is ApiKey or Subject), "
                          "which their end users escape")
CEDAR_KEY_EQUALS_PERMIT = _warning("AGW414", "permit matches keys only (== or is ApiKey or "
                                   "Subject), denying their end users")
CEDAR_ANNOTATION = _warning("AGW415", "annotation aigw does not read, spelt like one it does")
CEDAR_USER_UNTIED = _warning("AGW416", "policy names an end user but no key: user ids are the "
                             "client's own word")

# AGW5xx: pipelines and templates
PIPELINE_NOT_MAPPING = _error("AGW501", "pipeline file is not a mapping")
STEP_KIND = _error("AGW502", "unknown step kind")
REF_STEP = _error("AGW503", "unknown step")
STEP_CYCLE = _error("AGW504", "steps depend on each other in a cycle")
TEMPLATE_SYNTAX = _error("AGW505", "template does not compile")
TEMPLATE_NAME = _error("AGW506", "template uses a name its step cannot see")
JSON_SCHEMA = _error("AGW507", "invalid JSON Schema")
LOOP_UNBOUNDED = _error("AGW508", "loop without max_iterations")
REF_MODEL = _error("AGW509", "unknown model")
PIPELINE_CYCLE = _error("AGW510", "pipelines call each other in a cycle")
PYTHON_CALLABLE = _error("AGW511", "python step names no importable async function")
STEP_NOT_ALLOWED = _error("AGW512", "not allowed in this kind of step")
HTTP_DESTINATION = _error("AGW513", "http step's destination is not fixed")
INPUT_UNDECLARED = _warning("AGW514", "template reads an input field its schema does not declare")
REF_AGENT = _error("AGW515", "unknown agent")

# AGW9xx: the compiler itself
INTERNAL = _error("AGW901", "internal compiler error")

ALL_CODES: tuple[Code, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, Code)
)
