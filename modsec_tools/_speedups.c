/* modsec_tools._speedups: C versions of the native parser's innermost loops, and of the
 * loop that deletes a batch's entries.
 *
 * Each function here has a pure-Python twin (in native.py, messages.py, http.py or
 * storage.py, named in its docstring) that defines its meaning; tests run
 * both and require equal results. The callers use these when the extension was built and
 * fall back to the twins when it was not. The parser's functions do no I/O; every index is
 * checked against the buffer's length, since the input is attacker-controlled.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The bytes a function was given, or -1 with TypeError. */
static int bytes_arg(PyObject *arg, const char *function, const char **s, Py_ssize_t *n) {
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s() needs bytes", function);
        return -1;
    }
    *s = PyBytes_AS_STRING(arg);
    *n = PyBytes_GET_SIZE(arg);
    return 0;
}

/* (first, second), taking both references (or releasing them on failure); NULL in,
 * NULL out, so calls can be chained after a failed one. */
static PyObject *pair_of(PyObject *first, PyObject *second) {
    if (first == NULL || second == NULL) {
        Py_XDECREF(first);
        Py_XDECREF(second);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(first);
        Py_DECREF(second);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, first);  /* steals both references */
    PyTuple_SET_ITEM(pair, 1, second);
    return pair;
}

/* list.append(item), taking the reference to item; NULL item (a failed call) is -1. */
static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Appends line to *more, the list made on the first line; takes the reference. */
static int gather(PyObject **more, PyObject *line) {
    if (line != NULL && *more == NULL && (*more = PyList_New(0)) == NULL) {
        Py_DECREF(line);
        return -1;
    }
    return append_new(*more, line);
}

/* A str argument's characters: its kind, data and length, for PyUnicode_READ. */
typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
} Chars;

static int chars_arg(PyObject *arg, const char *function, Chars *chars) {
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s() needs str", function);
        return -1;
    }
    chars->kind = PyUnicode_KIND(arg);
    chars->data = PyUnicode_DATA(arg);
    chars->n = PyUnicode_GET_LENGTH(arg);
    return 0;
}

#define CHAR_AT(chars, i) PyUnicode_READ((chars).kind, (chars).data, (i))

static const char *find_bytes(const char *hay, Py_ssize_t hay_len,
                              const char *needle, Py_ssize_t needle_len) {
    if (hay_len < needle_len)
        return NULL;
    return memmem(hay, (size_t)hay_len, needle, (size_t)needle_len);
}

/* ``X--`` then end of line, end of piece or a CR: the tail of a real boundary line. */
static int boundary_tail(const char *s, Py_ssize_t q, Py_ssize_t piece_end) {
    if (piece_end - q < 3 || s[q] < 'A' || s[q] > 'Z' || s[q + 1] != '-' || s[q + 2] != '-')
        return 0;
    return piece_end - q == 3 || s[q + 3] == '\n' || s[q + 3] == '\r';
}

/* Where the section's own bytes start after its boundary tail: past the first newline
 * among the piece's first six bytes; with none there, the piece holds no body. */
static Py_ssize_t body_start_after(const char *s, Py_ssize_t q, Py_ssize_t piece_end) {
    Py_ssize_t limit = q + 6 < piece_end ? q + 6 : piece_end;
    for (Py_ssize_t i = q; i < limit; i++)
        if (s[i] == '\n')
            return i + 1;
    return piece_end;
}

static int store_part(PyObject *parts, char letter, const char *s, Py_ssize_t from,
                      Py_ssize_t to) {
    PyObject *body;
    if (letter == 'A') {  /* section A is kept as a whole line, newline included */
        body = PyBytes_FromStringAndSize(NULL, to - from + 1);
        if (body == NULL)
            return -1;
        memcpy(PyBytes_AS_STRING(body), s + from, (size_t)(to - from));
        PyBytes_AS_STRING(body)[to - from] = '\n';
    } else {
        body = PyBytes_FromStringAndSize(s + from, to - from);
        if (body == NULL)
            return -1;
    }
    PyObject *key = PyUnicode_FromStringAndSize(&letter, 1);  /* a cached 1-char str */
    int rc = key == NULL ? -1 : PyDict_SetItem(parts, key, body);
    Py_XDECREF(key);
    Py_DECREF(body);
    return rc;
}

static int note_unknown(PyObject *unknown, char letter) {
    if (strchr("ABCDEFGHIJKZ", letter) != NULL)
        return 0;
    return append_new(unknown, PyUnicode_FromStringAndSize(&letter, 1));
}

PyDoc_STRVAR(split_sections_doc,
"split_sections(entry: bytes) -> (boundary, parts, complete, unknown) | None\n\n"
"native.scan_sections_py; None when the entry does not start with an A boundary.");

static PyObject *split_sections(PyObject *Py_UNUSED(module), PyObject *arg) {
    const char *s;
    Py_ssize_t n;
    if (bytes_arg(arg, "split_sections", &s, &n) < 0)
        return NULL;
    if (n < 2 || s[0] != '-' || s[1] != '-')
        Py_RETURN_NONE;
    Py_ssize_t hex = 0;
    while (2 + hex < n && hex <= 32 && is_hex(s[2 + hex]))
        hex++;
    Py_ssize_t at = 2 + hex;
    if (hex < 8 || hex > 32 || n - at < 4 || memcmp(s + at, "-A--", 4) != 0)
        Py_RETURN_NONE;
    at += 4;
    if (at < n && s[at] == '\r')
        at++;
    if (at >= n || s[at] != '\n')
        Py_RETURN_NONE;
    at++;

    char sep[40];  /* "\n--" + boundary + "-" */
    Py_ssize_t sep_len = 4 + hex;
    sep[0] = '\n'; sep[1] = '-'; sep[2] = '-';
    memcpy(sep + 3, s + 2, (size_t)hex);
    sep[3 + hex] = '-';

    PyObject *boundary = PyBytes_FromStringAndSize(s + 2, hex);
    PyObject *parts = PyDict_New();
    PyObject *unknown = PyList_New(0);
    if (boundary == NULL || parts == NULL || unknown == NULL)
        goto fail;
    char letter = 'A';
    Py_ssize_t body_from = at;
    const char *hit = find_bytes(s + at, n - at, sep, sep_len);
    int complete = 0;
    while (hit != NULL) {
        Py_ssize_t p = hit - s, q = p + sep_len;
        const char *next = find_bytes(s + q, n - q, sep, sep_len);
        Py_ssize_t piece_end = next != NULL ? next - s : n;
        if (boundary_tail(s, q, piece_end)) {
            if (store_part(parts, letter, s, body_from, p) < 0)
                goto fail;
            letter = s[q];
            if (letter == 'Z') {
                complete = 1;
                break;
            }
            body_from = body_start_after(s, q, piece_end);
            if (note_unknown(unknown, letter) < 0)
                goto fail;
        }
        hit = next;
    }
    if (!complete && store_part(parts, letter, s, body_from, n) < 0)
        goto fail;
    return Py_BuildValue("(NNON)", boundary, parts, complete ? Py_True : Py_False, unknown);
fail:
    Py_XDECREF(boundary);
    Py_XDECREF(parts);
    Py_XDECREF(unknown);
    return NULL;
}

static PyObject *decode(const char *s, Py_ssize_t len) {
    return PyUnicode_DecodeUTF8(s, len, "surrogateescape");
}

static int trailer_key(const char *s, Py_ssize_t len) {
    if (len < 1 || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z')))
        return 0;
    for (Py_ssize_t i = 1; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
              || c == '-'))
            return 0;
    }
    return 1;
}

static int all_space(PyObject *text) {
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0, n = PyUnicode_GET_LENGTH(text); i < n; i++)
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            return 0;
    return 1;
}

/* Joins the lines gathered for the last (key, value) pair onto its value, with glue
 * between them: the trailer's continuation lines ("\n"), a head's folded lines (" "). */
static int fold_into_last(PyObject *pairs, PyObject **more, const char *glue) {
    if (*more == NULL)
        return 0;
    Py_ssize_t last = PyList_GET_SIZE(pairs) - 1;
    PyObject *pair = PyList_GET_ITEM(pairs, last);
    PyObject *separator = PyUnicode_FromString(glue);
    int rc = -1;
    if (separator != NULL && PyList_Insert(*more, 0, PyTuple_GET_ITEM(pair, 1)) == 0) {
        PyObject *value = PyUnicode_Join(separator, *more);
        if (value != NULL) {
            PyObject *joined = PyTuple_Pack(2, PyTuple_GET_ITEM(pair, 0), value);
            Py_DECREF(value);
            if (joined != NULL)
                rc = PyList_SetItem(pairs, last, joined);
        }
    }
    Py_XDECREF(separator);
    Py_CLEAR(*more);
    return rc;
}

/* The keys ModSecurity 2.9 writes, made once: a section H has about 15 lines */
static const char *const usual_keys[] = {
    "Message", "Apache-Error", "Action", "Stopwatch", "Stopwatch2", "Producer", "Server",
    "Engine-Mode", "Response-Body-Transformed", "WebApp-Info", "Apache-Handler",
    "Sanitised-Args", "Sanitised-Request-Headers", "Sanitised-Response-Headers",
};
#define USUAL_KEYS (sizeof usual_keys / sizeof usual_keys[0])
static PyObject *usual_key_texts[USUAL_KEYS];

static PyObject *trailer_key_text(const char *s, Py_ssize_t len) {
    for (size_t k = 0; k < USUAL_KEYS; k++) {
        if (strncmp(usual_keys[k], s, (size_t)len) == 0 && usual_keys[k][len] == '\0') {
            if (usual_key_texts[k] == NULL) {
                usual_key_texts[k] = PyUnicode_InternFromString(usual_keys[k]);
                if (usual_key_texts[k] == NULL)
                    return NULL;
            }
            Py_INCREF(usual_key_texts[k]);
            return usual_key_texts[k];
        }
    }
    return PyUnicode_DecodeASCII(s, len, NULL);
}

static int add_pair(PyObject *trailer, const char *s, Py_ssize_t from, Py_ssize_t colon,
                    Py_ssize_t end) {
    Py_ssize_t value_end = end;
    if (value_end > colon + 2 && s[value_end - 1] == '\r')
        value_end--;
    PyObject *key = trailer_key_text(s + from, colon - from);
    PyObject *value = key == NULL ? NULL : decode(s + colon + 2, value_end - colon - 2);
    return append_new(trailer, pair_of(key, value));
}

static int add_continuation(PyObject **more, const char *s, Py_ssize_t from, Py_ssize_t end) {
    while (end > from && s[end - 1] == '\r')
        end--;
    PyObject *line = decode(s + from, end - from);
    if (line != NULL && all_space(line)) {
        Py_DECREF(line);
        return 0;
    }
    return gather(more, line);
}

/* The first ": " of a line (a key is short: memchr beats memmem's setup here). */
static const char *find_key_end(const char *s, Py_ssize_t len) {
    const char *end = s + len;
    for (const char *at = s; at < end; at++) {
        at = memchr(at, ':', (size_t)(end - at));
        if (at == NULL || at + 1 >= end)
            return NULL;
        if (at[1] == ' ')
            return at;
    }
    return NULL;
}

PyDoc_STRVAR(trailer_lines_doc,
"trailer_lines(section_h: bytes) -> list[tuple[str, str]]\n\n"
"native.trailer_lines_py: section H's Key: value lines (values decoded with\n"
"surrogateescape, continuation lines joined on).");

static PyObject *trailer_lines(PyObject *Py_UNUSED(module), PyObject *arg) {
    const char *s;
    Py_ssize_t n;
    if (bytes_arg(arg, "trailer_lines", &s, &n) < 0)
        return NULL;
    PyObject *trailer = PyList_New(0), *more = NULL;
    if (trailer == NULL)
        return NULL;
    for (Py_ssize_t from = 0; from <= n;) {
        const char *newline = memchr(s + from, '\n', (size_t)(n - from));
        Py_ssize_t end = newline != NULL ? newline - s : n;
        const char *colon = find_key_end(s + from, end - from);
        int rc = 0;
        if (colon != NULL && trailer_key(s + from, colon - s - from)) {
            rc = fold_into_last(trailer, &more, "\n");
            if (rc == 0)
                rc = add_pair(trailer, s, from, colon - s, end);
        } else if (PyList_GET_SIZE(trailer) > 0) {
            rc = add_continuation(&more, s, from, end);
        }
        if (rc < 0) {
            Py_XDECREF(more);
            Py_DECREF(trailer);
            return NULL;
        }
        from = end + 1;
    }
    if (fold_into_last(trailer, &more, "\n") < 0) {
        Py_DECREF(trailer);
        return NULL;
    }
    return trailer;
}

/* re's \w for str patterns; ASCII (nearly all that is scanned) without the Unicode tables */
static int is_word(Py_UCS4 c) {
    if (c < 128)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
               || c == '_';
    return Py_UNICODE_ISALNUM(c);
}

/* One ``[key "value"]`` at i (the pattern messages._FIELD, whose loops are possessive, so
 * the match is deterministic); its end, or -1. */
static Py_ssize_t match_field(int kind, const void *d, Py_ssize_t n, Py_ssize_t i,
                              Py_ssize_t *key_end, Py_ssize_t *value_from) {
    Py_ssize_t j = i + 1;  /* d[i] is '[' */
    while (j < n && is_word(PyUnicode_READ(kind, d, j)))
        j++;
    if (j == i + 1 || n - j < 2 || PyUnicode_READ(kind, d, j) != ' '
        || PyUnicode_READ(kind, d, j + 1) != '"')
        return -1;
    *key_end = j;
    j += 2;
    *value_from = j;
    while (j < n) {
        Py_UCS4 c = PyUnicode_READ(kind, d, j);
        if (c == '"')
            break;
        if (c == '\\') {
            if (j + 1 >= n || PyUnicode_READ(kind, d, j + 1) == '\n')
                return -1;
            j += 2;
        } else {
            j++;
        }
    }
    if (n - j < 2 || PyUnicode_READ(kind, d, j + 1) != ']')
        return -1;
    return j + 2;
}

PyDoc_STRVAR(message_fields_doc,
"message_fields(text: str, start: int) -> list[tuple[str, str]]\n\n"
"messages.split_fields_py, i.e. messages._FIELD.findall(text, start): every\n"
"[key \"value\"] of a rule message.");

static PyObject *message_fields(PyObject *Py_UNUSED(module), PyObject *const *args,
                                Py_ssize_t nargs) {
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "message_fields() needs (str, int)");
        return NULL;
    }
    PyObject *text = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    int kind = PyUnicode_KIND(text);
    const void *d = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    for (Py_ssize_t i = start < 0 ? 0 : start; i < n;) {
        i = PyUnicode_FindChar(text, '[', i, n, 1);
        if (i < 0) {
            if (i == -2)
                goto fail;
            break;
        }
        Py_ssize_t key_end, value_from;
        Py_ssize_t end = match_field(kind, d, n, i, &key_end, &value_from);
        if (end < 0) {
            i++;
            continue;
        }
        PyObject *key = PyUnicode_Substring(text, i + 1, key_end);
        PyObject *value = key == NULL ? NULL : PyUnicode_Substring(text, value_from, end - 2);
        if (append_new(fields, pair_of(key, value)) < 0)
            goto fail;
        i = end;
    }
    return fields;
fail:
    Py_DECREF(fields);
    return NULL;
}

PyDoc_STRVAR(stopwatch_doc,
"stopwatch(value: str) -> dict[str, int]\n\n"
"native.stopwatch_py: the name=number pairs of a Stopwatch2 line.");

static PyObject *stopwatch(PyObject *Py_UNUSED(module), PyObject *text) {
    Chars t;
    if (chars_arg(text, "stopwatch", &t) < 0)
        return NULL;
    PyObject *timings = PyDict_New();
    if (timings == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < t.n;) {
        /* \b(\w+)=([0-9]{1,18})\b, tried at i; on failure findall moves on by one */
        if (!is_word(CHAR_AT(t, i))
            || (i > 0 && is_word(CHAR_AT(t, i - 1)))) {
            i++;
            continue;
        }
        Py_ssize_t j = i;
        while (j < t.n && is_word(CHAR_AT(t, j)))
            j++;
        Py_ssize_t k = j + 1;
        long long number = 0;
        while (j < t.n && CHAR_AT(t, j) == '=' && k < t.n && k - j <= 18) {
            Py_UCS4 c = CHAR_AT(t, k);
            if (c < '0' || c > '9')
                break;
            number = number * 10 + (long long)(c - '0');
            k++;
        }
        if (j >= t.n || CHAR_AT(t, j) != '=' || k == j + 1
            || (k < t.n && is_word(CHAR_AT(t, k)))) {
            i++;
            continue;
        }
        PyObject *name = PyUnicode_Substring(text, i, j);
        PyObject *value = name == NULL ? NULL : PyLong_FromLongLong(number);
        int rc = value == NULL ? -1 : PyDict_SetItem(timings, name, value);
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (rc < 0) {
            Py_DECREF(timings);
            return NULL;
        }
        i = k;
    }
    return timings;
}

PyDoc_STRVAR(modsecurity_part_doc,
"modsecurity_part(line: str) -> str | None\n\n"
"messages.modsecurity_part_py: what follows the [key value] prefixes and\n"
"\"ModSecurity: \" of an Apache-Error line; None for other modules' lines.");

static PyObject *modsecurity_part(PyObject *Py_UNUSED(module), PyObject *text) {
    Chars t;
    if (chars_arg(text, "modsecurity_part", &t) < 0)
        return NULL;
    Py_ssize_t i = 0;
    /* (?:\[\w+ [^\]]*\] )*: each group can match only one way, and a group left
     * unmatched leaves a '[' where "ModSecurity: " would have to start */
    while (i < t.n && CHAR_AT(t, i) == '[') {
        Py_ssize_t j = i + 1;
        while (j < t.n && is_word(CHAR_AT(t, j)))
            j++;
        if (j == i + 1 || j >= t.n || CHAR_AT(t, j) != ' ')
            break;
        j++;
        while (j < t.n && CHAR_AT(t, j) != ']')
            j++;
        if (t.n - j < 2 || CHAR_AT(t, j + 1) != ' ')
            break;
        i = j + 2;
    }
    static const char marker[] = "ModSecurity: ";
    Py_ssize_t m = (Py_ssize_t)(sizeof marker - 1);
    if (t.n - i < m)
        Py_RETURN_NONE;
    for (Py_ssize_t k = 0; k < m; k++)
        if (CHAR_AT(t, i + k) != (Py_UCS4)marker[k])
            Py_RETURN_NONE;
    return PyUnicode_Substring(text, i + m, t.n);
}

/* text.strip(): the same whitespace as str.strip() with no argument */
static PyObject *strip_text(PyObject *text) {
    int kind = PyUnicode_KIND(text);
    const void *d = PyUnicode_DATA(text);
    Py_ssize_t from = 0, to = PyUnicode_GET_LENGTH(text);
    while (from < to && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, d, from)))
        from++;
    while (to > from && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, d, to - 1)))
        to--;
    return PyUnicode_Substring(text, from, to);
}

static PyObject *decode_stripped(const char *s, Py_ssize_t len) {
    PyObject *text = decode(s, len);
    if (text == NULL)
        return NULL;
    PyObject *stripped = strip_text(text);
    Py_DECREF(text);
    return stripped;
}

static int add_header(PyObject *found, const char *s, Py_ssize_t from, Py_ssize_t colon,
                      Py_ssize_t end) {
    PyObject *name = decode_stripped(s + from, colon - from);
    PyObject *value = name == NULL ? NULL : decode_stripped(s + colon + 1, end - colon - 1);
    return append_new(found, pair_of(name, value));
}

static int add_folded(PyObject **more, const char *s, Py_ssize_t from, Py_ssize_t end) {
    return gather(more, decode_stripped(s + from, end - from));
}

PyDoc_STRVAR(http_head_doc,
"http_head(section: bytes) -> tuple[str, list[tuple[str, str]]]\n\n"
"http.http_head_py: the first line and the Name: value pairs of section B or F.");

static PyObject *http_head(PyObject *Py_UNUSED(module), PyObject *arg) {
    const char *s;
    Py_ssize_t n;
    if (bytes_arg(arg, "http_head", &s, &n) < 0)
        return NULL;
    PyObject *first = NULL, *found = PyList_New(0), *more = NULL;
    if (found == NULL)
        return NULL;
    for (Py_ssize_t from = 0; from <= n;) {
        const char *newline = memchr(s + from, '\n', (size_t)(n - from));
        Py_ssize_t next = newline != NULL ? newline - s + 1 : n + 1;
        Py_ssize_t end = newline != NULL ? newline - s : n;
        if (newline != NULL && end > from && s[end - 1] == '\r')
            end--;  /* "\r\n" ends a line as "\n" does; a lone "\r" stays */
        int rc = 0;
        if (first == NULL) {
            first = decode(s + from, end - from);
            rc = first == NULL ? -1 : 0;
        } else if (end == from) {
            ;
        } else if ((s[from] == ' ' || s[from] == '\t') && PyList_GET_SIZE(found) > 0) {
            rc = add_folded(&more, s, from, end);
        } else {
            const char *colon = memchr(s + from, ':', (size_t)(end - from));
            if (colon != NULL) {
                rc = fold_into_last(found, &more, " ");
                if (rc == 0)
                    rc = add_header(found, s, from, colon - s, end);
            }
        }
        if (rc < 0) {
            Py_XDECREF(first);
            Py_XDECREF(more);
            Py_DECREF(found);
            return NULL;
        }
        from = next;
    }
    if (fold_into_last(found, &more, " ") < 0) {
        Py_DECREF(first);
        Py_DECREF(found);
        return NULL;
    }
    return Py_BuildValue("(NN)", first, found);
}

static int digits(const char *s, Py_ssize_t from, Py_ssize_t count, int *value) {
    int v = 0;
    for (Py_ssize_t i = from; i < from + count; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *value = v;
    return 1;
}

static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";

/* One tzinfo per UTC offset in minutes, made once (a log has one or two). */
static PyObject *zones[2 * 24 * 60];

static PyObject *zone(int minutes) {
    PyObject **slot = &zones[minutes + 24 * 60];
    if (*slot == NULL) {
        PyObject *delta = PyDelta_FromDSU(0, minutes * 60, 0);
        if (delta == NULL)
            return NULL;
        *slot = PyTimeZone_FromOffset(delta);
        Py_DECREF(delta);
    }
    return *slot;
}

PyDoc_STRVAR(apache_time_doc,
"apache_time(text: str) -> datetime | None\n\n"
"timestamps.parse_apache_time for the time stamps ModSecurity writes\n"
"(28/Nov/2026:16:26:42.659421 +0100, or --0500 for negative offsets); None for\n"
"anything else, which the Python function then reads or rejects.");

static PyObject *apache_time(PyObject *Py_UNUSED(module), PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "apache_time() needs str");
        return NULL;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (s == NULL) {  /* lone surrogates: not a time stamp ModSecurity wrote */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int day, year, hour, minute, second, micro = 0, off_h, off_m, month;
    Py_ssize_t i = s[1] == '/' ? 1 : 2;  /* day: one or two digits */
    if (n < 26 || !digits(s, 0, i, &day) || s[i] != '/' || s[i + 4] != '/')
        Py_RETURN_NONE;
    const char *name = NULL;
    for (month = 0; month < 12; month++)
        if (memcmp(months + 3 * month, s + i + 1, 3) == 0) {
            name = months + 3 * month;
            break;
        }
    i += 5;
    if (name == NULL || !digits(s, i, 4, &year) || s[i + 4] != ':'
        || !digits(s, i + 5, 2, &hour) || s[i + 7] != ':' || !digits(s, i + 8, 2, &minute)
        || s[i + 10] != ':' || !digits(s, i + 11, 2, &second))
        Py_RETURN_NONE;
    i += 13;
    if (i < n && s[i] == '.') {
        Py_ssize_t from = ++i;
        while (i < n && i - from < 6 && s[i] >= '0' && s[i] <= '9')
            micro = micro * 10 + (s[i++] - '0');
        if (i == from)
            Py_RETURN_NONE;
        for (Py_ssize_t pad = i - from; pad < 6; pad++)
            micro *= 10;
    }
    if (n - i < 6 || s[i] != ' ' || (s[i + 1] != '+' && s[i + 1] != '-'))
        Py_RETURN_NONE;
    int sign = s[i + 1] == '-' ? -1 : 1;
    i += 2;
    if (s[i] == '-')  /* ModSecurity 2.9 prints negative offsets as --0500 */
        i++;
    if (n - i < 4 || !digits(s, i, 2, &off_h))
        Py_RETURN_NONE;
    i += 2;
    if (s[i] == '-')
        i++;
    if (i < n && s[i] == ':')
        i++;
    if (n - i != 2 || !digits(s, i, 2, &off_m) || off_h * 60 + off_m >= 24 * 60)
        Py_RETURN_NONE;
    PyObject *tz = zone(sign * (off_h * 60 + off_m));
    if (tz == NULL)
        return NULL;
    PyObject *stamp = PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month + 1, day, hour, minute, second, micro, tz, PyDateTimeAPI->DateTimeType);
    if (stamp == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();  /* 31 Feb, hour 25: the Python function says why */
        Py_RETURN_NONE;
    }
    return stamp;
}

/* remove_entries' results besides 0 (deleted) and an errno (storage.GONE, REPLACED,
   CHANGED) */
#define GONE (-1)
#define REPLACED (-2)
#define CHANGED (-3)

PyDoc_STRVAR(remove_entries_doc,
"remove_entries(entries: list[tuple]) -> list[int]\n\n"
"storage.remove_entries_py, without holding the GIL: the committing thread's database\n"
"insert takes the GIL back at every row, and threads deleting in Python between their\n"
"system calls made it wait several times as long.");

struct doomed {
    int fd;
    const char *name;
    unsigned long long inode, device;
    long long size, mtime_ns, ctime_ns; /* as read; -1: not checked */
    int result;
};

static int differs(long long then, long long now) {
    return then != -1 && then != now;
}

static int remove_entry(const struct doomed *entry) {
    struct stat now;
    int done;
    do
        done = fstatat(entry->fd, entry->name, &now, AT_SYMLINK_NOFOLLOW);
    while (done != 0 && errno == EINTR);
    if (done != 0)
        return errno == ENOENT ? GONE : errno;
    if ((unsigned long long)now.st_ino != entry->inode
        || (unsigned long long)now.st_dev != entry->device)
        return REPLACED;
    if (differs(entry->size, (long long)now.st_size)
        || differs(entry->mtime_ns, (long long)now.st_mtim.tv_sec * 1000000000LL
                                        + now.st_mtim.tv_nsec)
        || differs(entry->ctime_ns, (long long)now.st_ctim.tv_sec * 1000000000LL
                                        + now.st_ctim.tv_nsec))
        return CHANGED;
    do
        done = unlinkat(entry->fd, entry->name, 0);
    while (done != 0 && errno == EINTR);
    if (done != 0)
        return errno == ENOENT ? GONE : errno;
    return 0;
}

static PyObject *remove_entries(PyObject *Py_UNUSED(module), PyObject *arg) {
    /* A tuple of our own keeps every name's bytes alive while the GIL is released. */
    PyObject *items = PySequence_Tuple(arg);
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    struct doomed *entries = PyMem_Calloc(n ? n : 1, sizeof *entries);
    PyObject *results = NULL;
    if (entries == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        struct doomed *entry = &entries[i];
        PyObject *item = PyTuple_GET_ITEM(items, i);
        entry->size = entry->mtime_ns = entry->ctime_ns = -1;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "iyKK|LLL;remove_entries() needs "
                "(dir_fd, name, inode, device[, size, mtime_ns, ctime_ns]) tuples",
                &entry->fd, &entry->name, &entry->inode, &entry->device, &entry->size,
                &entry->mtime_ns, &entry->ctime_ns)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "remove_entries() needs tuples");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        entries[i].result = remove_entry(&entries[i]);
    Py_END_ALLOW_THREADS
    results = PyList_New(n);
    for (Py_ssize_t i = 0; results != NULL && i < n; i++) {
        PyObject *result = PyLong_FromLong(entries[i].result);
        if (result == NULL)
            Py_CLEAR(results);
        else
            PyList_SET_ITEM(results, i, result);
    }
done:
    PyMem_Free(entries);
    Py_DECREF(items);
    return results;
}

static PyMethodDef methods[] = {
    {"remove_entries", remove_entries, METH_O, remove_entries_doc},
    {"split_sections", split_sections, METH_O, split_sections_doc},
    {"trailer_lines", trailer_lines, METH_O, trailer_lines_doc},
    {"message_fields", (PyCFunction)(void (*)(void))message_fields, METH_FASTCALL,
     message_fields_doc},
    {"stopwatch", stopwatch, METH_O, stopwatch_doc},
    {"modsecurity_part", modsecurity_part, METH_O, modsecurity_part_doc},
    {"http_head", http_head, METH_O, http_head_doc},
    {"apache_time", apache_time, METH_O, apache_time_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "modsec_tools._speedups",
    "C versions of the native parser's innermost loops (see modsec_tools/native.py), and "
    "of the loop deleting a batch's entries (storage.py).",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    return PyModuleDef_Init(&module_def);
}
