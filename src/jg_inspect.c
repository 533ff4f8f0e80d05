/*
 * Inspection of an upstream job body: decides whether a 200 response may
 * be cached, and which organization it proves the caller may read. A wrong
 * "yes" here serves a stale or foreign response for the life of the entry,
 * so every rule fails closed: anything unexpected makes the body not
 * cacheable.
 *
 * jsmn tokenizes the body in place. jsmn is a tokenizer, not a validator:
 * even in strict mode it accepts missing or extra commas and colons,
 * misspelled literals such as "nul", and raw control bytes in strings. A
 * pass over the tokens and the gaps between them rejects those, so that
 * only one well-formed JSON object followed by whitespace gets through.
 */
#include "jobgate/jg_inspect.h"

#include <limits.h>
#include <string.h>

#include "jobgate/jg_util.h"

/*
 * jsmn is header-only. JSMN_STATIC keeps its functions private to this
 * file, JSMN_STRICT rejects bare words and non-string keys, and parent
 * links let the validation below walk from a token up to its containers.
 */
#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS
#include <jsmn.h>

/*
 * Tokens tried on the stack first. The 500-byte OrgJobDB body of the unit
 * tests has 40, so only a body with an unusually large request_data pays
 * for a counting pass and a heap array.
 */
#define STACK_TOKENS 128

/* jsmn stores offsets in int, so a longer body cannot be tokenized. */
#define MAX_TOKENIZED_LEN ((size_t)INT_MAX)

/*
 * Decode buffer for id and organization_id: the longest UUID spelling is
 * the 45-byte URN form, so anything that decodes longer is not a UUID.
 */
#define UUID_FIELD_MAX 64

/* Decode buffer for a key: the longest key compared is "organization_id". */
#define KEY_MAX 32

enum field {
    FIELD_ID = 0,
    FIELD_ORG,
    FIELD_STATUS,
    FIELD_COUNT,
};

static const char *const field_names[FIELD_COUNT] = {
    "id",
    "organization_id",
    "status",
};

/* Occurrences of one field at the top level, and its last value token. */
struct field_seen {
    int count;
    int value;
};

static const char *const verdict_names[] = {
    [JG_INSPECT_CACHEABLE] = "cacheable",
    [JG_INSPECT_NOT_TERMINAL] = "not-terminal",
    [JG_INSPECT_TOO_LARGE] = "too-large",
    [JG_INSPECT_NOT_JSON] = "not-json",
    [JG_INSPECT_NOT_OBJECT] = "not-object",
    [JG_INSPECT_TRAILING_DATA] = "trailing-data",
    [JG_INSPECT_DUPLICATE_FIELD] = "duplicate-field",
    [JG_INSPECT_MISSING_FIELD] = "missing-field",
    [JG_INSPECT_BAD_FIELD] = "bad-field",
    [JG_INSPECT_ID_MISMATCH] = "id-mismatch",
};

static bool
is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool
all_space(const char *s, size_t from, size_t to)
{
    size_t i;

    for (i = from; i < to; i++) {
        if (!is_json_space(s[i]))
            return false;
    }
    return true;
}

/* True when s[from..to) is whitespace, one sep character, whitespace. */
static bool
is_separator(const char *s, size_t from, size_t to, char sep)
{
    size_t i = from;

    while (i < to && is_json_space(s[i]))
        i++;
    if (i == to || s[i] != sep)
        return false;
    return all_space(s, i + 1, to);
}

/*
 * Tokenize body[0..len) into *tokens: the stack array when it is large
 * enough, otherwise a heap array sized by a counting pass, which the caller
 * frees when *tokens is not stack. Returns the token count or a jsmn error.
 */
static int
tokenize(const char *body, size_t len, jsmntok_t stack[STACK_TOKENS],
         jsmntok_t **tokens)
{
    jsmn_parser parser;
    int count;

    *tokens = stack;
    jsmn_init(&parser);
    count = jsmn_parse(&parser, body, len, stack, STACK_TOKENS);
    if (count != JSMN_ERROR_NOMEM)
        return count;

    /* The count is bounded by len, which max_body_bytes bounds. */
    jsmn_init(&parser);
    count = jsmn_parse(&parser, body, len, NULL, 0);
    if (count <= 0)
        return count;

    *tokens = jg_malloc((size_t)count * sizeof(**tokens));
    jsmn_init(&parser);
    return jsmn_parse(&parser, body, len, *tokens, (unsigned int)count);
}

/* Index of the first token after the subtree rooted at token i. */
static int
skip_subtree(const jsmntok_t *tok, int count, int i)
{
    int pending = 1;

    while (pending > 0 && i < count) {
        pending += tok[i].size - 1;
        i++;
    }
    return i;
}

/* jsmn's string tokens exclude the quotes, and these spans include them. */
static size_t
span_start(const jsmntok_t *t)
{
    return (size_t)(t->type == JSMN_STRING ? t->start - 1 : t->start);
}

static size_t
span_end(const jsmntok_t *t)
{
    return (size_t)(t->type == JSMN_STRING ? t->end + 1 : t->end);
}

/* The JSON number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool
is_number(const char *s, size_t len)
{
    size_t i = 0;
    size_t digits;

    if (i < len && s[i] == '-')
        i++;
    if (i < len && s[i] == '0') {
        i++;
    } else {
        for (digits = 0; i < len && s[i] >= '0' && s[i] <= '9'; digits++)
            i++;
        if (digits == 0)
            return false;
    }

    if (i < len && s[i] == '.') {
        i++;
        for (digits = 0; i < len && s[i] >= '0' && s[i] <= '9'; digits++)
            i++;
        if (digits == 0)
            return false;
    }

    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        for (digits = 0; i < len && s[i] >= '0' && s[i] <= '9'; digits++)
            i++;
        if (digits == 0)
            return false;
    }
    return i == len;
}

static bool
is_literal(const char *s, size_t len)
{
    return (len == 4 && memcmp(s, "true", 4) == 0) ||
           (len == 5 && memcmp(s, "false", 5) == 0) ||
           (len == 4 && memcmp(s, "null", 4) == 0) || is_number(s, len);
}

/*
 * Check one token on its own. Object members must be string keys with
 * exactly one value, and no other string or literal may have children.
 * Literals must be spelled right, and strings must contain no raw control
 * bytes (jsmn has already checked their escapes). An empty container must
 * contain only whitespace.
 */
static bool
token_is_valid(const char *body, const jsmntok_t *tok, int k)
{
    const jsmntok_t *t = &tok[k];
    bool is_key = t->parent >= 0 && tok[t->parent].type == JSMN_OBJECT;
    int i;

    if (is_key && (t->type != JSMN_STRING || t->size != 1))
        return false;

    switch (t->type) {
    case JSMN_OBJECT:
    case JSMN_ARRAY:
        return t->size > 0 || all_space(body, (size_t)t->start + 1,
                                        (size_t)t->end - 1);
    case JSMN_STRING:
        if (!is_key && t->size != 0)
            return false;
        /* NOTE: bytes from 0x80 up are not checked to be valid UTF-8. */
        for (i = t->start; i < t->end; i++) {
            if ((unsigned char)body[i] < 0x20)
                return false;
        }
        return true;
    case JSMN_PRIMITIVE:
        return t->size == 0 &&
               is_literal(body + t->start, (size_t)(t->end - t->start));
    default:
        return false;
    }
}

/*
 * Walk up from token t through the containers that close right after it,
 * until reaching a token whose parent is stop, and check that only
 * whitespace comes before each closing bracket. Returns the offset just
 * past the last of those brackets, or -1 when the text is not valid.
 */
static long
close_containers(const char *body, const jsmntok_t *tok, int t, int stop)
{
    size_t pos = span_end(&tok[t]);

    while (tok[t].parent != stop) {
        int p = tok[t].parent;

        /* Not reached with jsmn's tokens, which come in document order. */
        if (p < 0)
            return -1;
        if (tok[p].type == JSMN_OBJECT || tok[p].type == JSMN_ARRAY) {
            if (!all_space(body, pos, (size_t)tok[p].end - 1))
                return -1;
            pos = (size_t)tok[p].end;
        }
        t = p;
    }
    return (long)pos;
}

/*
 * Check the text between token k - 1 and token k: a colon after a key,
 * only whitespace after an opening bracket, and otherwise the closing
 * brackets of whatever ended, then exactly one comma.
 */
static bool
gap_is_valid(const char *body, const jsmntok_t *tok, int k)
{
    const jsmntok_t *t = &tok[k];
    const jsmntok_t *prev = &tok[k - 1];
    long pos;

    if (t->parent == k - 1 && prev->type == JSMN_STRING)
        return is_separator(body, span_end(prev), span_start(t), ':');
    if (t->parent == k - 1)
        return all_space(body, (size_t)prev->start + 1, span_start(t));

    pos = close_containers(body, tok, k - 1, t->parent);
    return pos >= 0 && is_separator(body, (size_t)pos, span_start(t), ',');
}

/*
 * Check that tokens [0, count), which form one object starting the body,
 * are exactly the text of a valid JSON object. Whitespace after the
 * object is checked by the caller.
 */
static bool
document_is_valid(const char *body, const jsmntok_t *tok, int count)
{
    int k;

    if (!all_space(body, 0, span_start(&tok[0])))
        return false;

    for (k = 0; k < count; k++) {
        if (!token_is_valid(body, tok, k))
            return false;
        if (k > 0 && !gap_is_valid(body, tok, k))
            return false;
    }
    return close_containers(body, tok, count - 1, -1) >= 0;
}

/*
 * Classify the tokenized body as a whole: one valid object and only
 * whitespace after it is JG_INSPECT_CACHEABLE, meaning "go on to the
 * fields".
 */
static enum jg_inspect_verdict
check_document(const char *body, size_t len, const jsmntok_t *tok, int count)
{
    if (count <= 0)
        return JG_INSPECT_NOT_JSON;
    if (tok[0].type != JSMN_OBJECT)
        return JG_INSPECT_NOT_OBJECT;

    /*
     * jsmn parses values back to back and stops at a NUL byte, so the raw
     * bytes after the object are checked rather than the token count: any
     * further value lies there too.
     */
    if (!all_space(body, (size_t)tok[0].end, len))
        return JG_INSPECT_TRAILING_DATA;

    if (!document_is_valid(body, tok, count))
        return JG_INSPECT_NOT_JSON;
    return JG_INSPECT_CACHEABLE;
}

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decoded text of a JSON string. Bytes past cap are counted in len but not
 * stored, so len > cap means "too long" while the rest of the string is
 * still checked for invalid escapes.
 */
struct decoded {
    char *buf;
    size_t cap;
    size_t len;
};

static void
put_byte(struct decoded *d, unsigned char c)
{
    if (d->len < d->cap)
        d->buf[d->len] = (char)c;
    d->len++;
}

static void
put_utf8(struct decoded *d, unsigned long cp)
{
    if (cp < 0x80) {
        put_byte(d, (unsigned char)cp);
    } else if (cp < 0x800) {
        put_byte(d, (unsigned char)(0xc0 | cp >> 6));
        put_byte(d, (unsigned char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        put_byte(d, (unsigned char)(0xe0 | cp >> 12));
        put_byte(d, (unsigned char)(0x80 | (cp >> 6 & 0x3f)));
        put_byte(d, (unsigned char)(0x80 | (cp & 0x3f)));
    } else {
        put_byte(d, (unsigned char)(0xf0 | cp >> 18));
        put_byte(d, (unsigned char)(0x80 | (cp >> 12 & 0x3f)));
        put_byte(d, (unsigned char)(0x80 | (cp >> 6 & 0x3f)));
        put_byte(d, (unsigned char)(0x80 | (cp & 0x3f)));
    }
}

/* Read the 4 hex digits of a \u escape at s[i], or return -1. */
static long
read_hex4(const char *s, size_t len, size_t i)
{
    long value = 0;
    size_t j;

    if (len < i || len - i < 4)
        return -1;
    for (j = i; j < i + 4; j++) {
        int digit = hex_value(s[j]);

        if (digit < 0)
            return -1;
        value = value << 4 | digit;
    }
    return value;
}

/*
 * Decode the \u escape whose hex digits start at s[*i], together with the
 * low surrogate that must follow a high one, and append it as UTF-8.
 * A lone surrogate of either kind is invalid.
 */
static bool
decode_unicode_escape(const char *s, size_t len, size_t *i, struct decoded *d)
{
    long unit = read_hex4(s, len, *i);
    long low;

    if (unit < 0 || (unit >= 0xdc00 && unit <= 0xdfff))
        return false;
    *i += 4;
    if (unit < 0xd800 || unit > 0xdbff) {
        put_utf8(d, (unsigned long)unit);
        return true;
    }

    if (len - *i < 2 || s[*i] != '\\' || s[*i + 1] != 'u')
        return false;
    low = read_hex4(s, len, *i + 2);
    if (low < 0xdc00 || low > 0xdfff)
        return false;
    *i += 6;
    put_utf8(d, 0x10000 + ((unsigned long)(unit - 0xd800) << 10) +
                    (unsigned long)(low - 0xdc00));
    return true;
}

/*
 * Decode the content of a JSON string token (without its quotes) into d.
 * Returns false for a raw control byte, an invalid escape or a lone
 * surrogate. Decoded text may hold NUL bytes, so it is compared by length.
 */
static bool
decode_string(const char *body, const jsmntok_t *t, struct decoded *d)
{
    static const char escapes[] = "\"\\/bfnrt";
    static const char meanings[] = "\"\\/\b\f\n\r\t";
    const char *s = body + t->start;
    size_t len = (size_t)(t->end - t->start);
    size_t i = 0;

    d->len = 0;
    while (i < len) {
        const char *escape;
        unsigned char c = (unsigned char)s[i++];

        if (c < 0x20)
            return false;
        if (c != '\\') {
            put_byte(d, c);
            continue;
        }

        if (i == len)
            return false;
        c = (unsigned char)s[i++];
        if (c == 'u') {
            if (!decode_unicode_escape(s, len, &i, d))
                return false;
            continue;
        }
        escape = c == '\0' ? NULL : strchr(escapes, c);
        if (escape == NULL)
            return false;
        put_byte(d, (unsigned char)meanings[escape - escapes]);
    }
    return true;
}

/* Which of the three fields key token t names, or -1 for another key. */
static int
field_of_key(const char *body, const jsmntok_t *t)
{
    char key[KEY_MAX];
    struct decoded d = {key, sizeof(key), 0};
    int f;

    if (!decode_string(body, t, &d) || d.len > d.cap)
        return -1;

    for (f = 0; f < FIELD_COUNT; f++) {
        if (d.len == strlen(field_names[f]) &&
            memcmp(key, field_names[f], d.len) == 0)
            return f;
    }
    return -1;
}

/*
 * Count the three fields among the members of the top-level object only:
 * each member's value subtree is skipped whole, so a "status" nested in
 * request_data is never seen here.
 */
static void
collect_fields(const char *body, const jsmntok_t *tok, int count,
               struct field_seen seen[FIELD_COUNT])
{
    int key = 1;
    int m;

    for (m = 0; m < tok[0].size && key < count; m++) {
        int f = field_of_key(body, &tok[key]);

        if (f >= 0) {
            seen[f].count++;
            seen[f].value = key + 1;
        }
        key = skip_subtree(tok, count, key);
    }
}

/* Decode a string value token and parse it as a version 4 UUID. */
static bool
parse_uuid_value(const char *body, const jsmntok_t *t,
                 uint8_t uuid[JG_UUID_LEN])
{
    char text[UUID_FIELD_MAX];
    struct decoded d = {text, sizeof(text), 0};

    if (t->type != JSMN_STRING)
        return false;
    if (!decode_string(body, t, &d) || d.len > d.cap)
        return false;
    return jg_uuid_parse(text, d.len, uuid) == JG_UUID_OK;
}

/*
 * Decide on the status value token. A status that decodes longer than any
 * name a set can hold cannot be terminal: it is a well-formed status that
 * may still change, not a bad field.
 */
static enum jg_inspect_verdict
check_status(const char *body, const jsmntok_t *t,
             const struct jg_status_set *terminal)
{
    char status[JG_MAX_STATUS_LEN];
    struct decoded d = {status, sizeof(status), 0};

    if (t->type != JSMN_STRING || !decode_string(body, t, &d))
        return JG_INSPECT_BAD_FIELD;
    if (d.len <= d.cap && jg_status_set_contains(terminal, status, d.len))
        return JG_INSPECT_CACHEABLE;
    return JG_INSPECT_NOT_TERMINAL;
}

/*
 * Check the three fields of a valid object. The organization is recorded
 * as soon as id and organization_id pass, before status is looked at:
 * a 200 for the requested job proves access to its organization whatever
 * state the job is in.
 */
static enum jg_inspect_verdict
check_fields(const char *body, const jsmntok_t *tok, int count,
             const uint8_t job[JG_UUID_LEN],
             const struct jg_status_set *terminal,
             struct jg_inspect_result *out)
{
    struct field_seen seen[FIELD_COUNT] = {{0, 0}};
    uint8_t id[JG_UUID_LEN];
    uint8_t org[JG_UUID_LEN];
    int f;

    collect_fields(body, tok, count, seen);
    for (f = 0; f < FIELD_COUNT; f++) {
        if (seen[f].count > 1)
            return JG_INSPECT_DUPLICATE_FIELD;
    }

    if (seen[FIELD_ID].count == 0)
        return JG_INSPECT_MISSING_FIELD;
    if (!parse_uuid_value(body, &tok[seen[FIELD_ID].value], id))
        return JG_INSPECT_BAD_FIELD;
    if (memcmp(id, job, JG_UUID_LEN) != 0)
        return JG_INSPECT_ID_MISMATCH;

    if (seen[FIELD_ORG].count == 0)
        return JG_INSPECT_MISSING_FIELD;
    if (!parse_uuid_value(body, &tok[seen[FIELD_ORG].value], org))
        return JG_INSPECT_BAD_FIELD;
    out->org_valid = true;
    memcpy(out->org, org, JG_UUID_LEN);

    if (seen[FIELD_STATUS].count == 0)
        return JG_INSPECT_MISSING_FIELD;
    return check_status(body, &tok[seen[FIELD_STATUS].value], terminal);
}

enum jg_inspect_verdict
jg_inspect_body(const char *body, size_t len, const uint8_t job[JG_UUID_LEN],
                const struct jg_status_set *terminal, size_t max_body_bytes,
                struct jg_inspect_result *out)
{
    jsmntok_t stack[STACK_TOKENS];
    jsmntok_t *tok = stack;
    enum jg_inspect_verdict verdict;
    int count;

    out->org_valid = false;
    memset(out->org, 0, sizeof(out->org));

    /* Checked before tokenizing, so an oversized body costs nothing. */
    if (len > max_body_bytes || len > MAX_TOKENIZED_LEN) {
        verdict = JG_INSPECT_TOO_LARGE;
        goto out;
    }

    count = tokenize(body, len, stack, &tok);
    verdict = check_document(body, len, tok, count);
    if (verdict == JG_INSPECT_CACHEABLE)
        verdict = check_fields(body, tok, count, job, terminal, out);

out:
    if (tok != stack)
        jg_free(tok);
    out->verdict = verdict;
    return verdict;
}

const char *
jg_inspect_verdict_name(enum jg_inspect_verdict verdict)
{
    if ((size_t)verdict >= JG_ARRAY_LEN(verdict_names) ||
        verdict_names[verdict] == NULL)
        return "unknown";
    return verdict_names[verdict];
}

static bool
is_list_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Add one name of a status list, trimmed. A repeated name is skipped. */
static int
add_status(struct jg_status_set *set, const char *name, size_t len)
{
    while (len > 0 && is_list_space(name[0])) {
        name++;
        len--;
    }
    while (len > 0 && is_list_space(name[len - 1]))
        len--;

    if (len == 0 || len > JG_MAX_STATUS_LEN - 1)
        return -1;
    if (jg_status_set_contains(set, name, len))
        return 0;
    if (set->count == JG_MAX_STATUSES)
        return -1;

    memcpy(set->names[set->count], name, len);
    set->names[set->count][len] = '\0';
    set->count++;
    return 0;
}

int
jg_status_set_parse(struct jg_status_set *set, const char *list)
{
    const char *name = list;

    memset(set, 0, sizeof(*set));
    for (;;) {
        const char *comma = strchr(name, ',');
        size_t len = comma != NULL ? (size_t)(comma - name) : strlen(name);

        if (add_status(set, name, len) < 0)
            goto fail;
        if (comma == NULL)
            return 0;
        name = comma + 1;
    }

fail:
    memset(set, 0, sizeof(*set));
    return -1;
}

bool
jg_status_set_contains(const struct jg_status_set *set, const char *name,
                       size_t len)
{
    size_t i;

    for (i = 0; i < set->count; i++) {
        if (strlen(set->names[i]) == len &&
            memcmp(set->names[i], name, len) == 0)
            return true;
    }
    return false;
}
