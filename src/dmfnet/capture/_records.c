/* The pcap record walk, one record after another, compiled.
 *
 * A pcap file is a chain: each record's captured length says where the next one starts,
 * so the walk is sequential by nature. numpy follows many guessed chains at once to walk
 * it (dmfnet/capture/reader.py, _PcapWalker._chase); this loop is the plain walk that the
 * chase stands in for, ten times faster, and used in its place when it is built.
 *
 * pcap_chain(data, pos, limit, header_size, max_caplen, big_endian, out) follows the
 * records from ``pos`` while they start before ``limit``, have a captured length of at
 * most ``max_caplen`` and end inside ``data``; it writes their positions into ``out``
 * (int64, stops when it is full) and returns (records found, position reached). It stops
 * at the first record that is not so (the caller looks at that one closely), exactly
 * where the walk one record at a time in reader.py stops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PREFETCH_AHEAD 4096

static uint32_t read_u32(const unsigned char *p, int big_endian)
{
    uint32_t v;
    memcpy(&v, p, 4);
    if (big_endian)
        v = __builtin_bswap32(v);
    return v;
}

static PyObject *pcap_chain(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    Py_ssize_t pos, limit, header_size, max_caplen;
    int big_endian;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnnnpw*", &data, &pos, &limit, &header_size, &max_caplen,
                          &big_endian, &out))
        return NULL;
    if (out.len % 8 != 0 || pos < 0 || header_size < 12 || max_caplen < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "pcap_chain: bad arguments");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)data.buf;
    const Py_ssize_t end = data.len;
    int64_t *found = (int64_t *)out.buf;
    const Py_ssize_t room = out.len / 8;
    Py_ssize_t n = 0;
    Py_BEGIN_ALLOW_THREADS
    while (pos < limit && n < room && pos + 12 <= end) {
        /* the next records lie ahead in the file: ask for them before they are needed
           (each step waits on the one before, so memory latency is what costs) */
        __builtin_prefetch(buf + pos + PREFETCH_AHEAD);
        const uint32_t caplen = read_u32(buf + pos + 8, big_endian);
        const Py_ssize_t next = pos + header_size + (Py_ssize_t)caplen;
        if ((Py_ssize_t)caplen > max_caplen || next > end)
            break;
        found[n++] = pos;
        pos = next;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return Py_BuildValue("nn", n, pos);
}

/* gather_rows(data, positions, width, out): out[i*width : (i+1)*width] =
 * data[positions[i] : positions[i] + width] for every position (all inside data). */
static PyObject *gather_rows(PyObject *self, PyObject *args)
{
    Py_buffer data, positions, out;
    Py_ssize_t width;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*nw*", &data, &positions, &width, &out))
        return NULL;
    const Py_ssize_t n = positions.len / 8;
    const int64_t *at = (const int64_t *)positions.buf;
    int ok = width > 0 && positions.len % 8 == 0 && out.len == n * width;
    for (Py_ssize_t i = 0; ok && i < n; i++)
        ok = at[i] >= 0 && at[i] + width <= data.len;
    if (ok) {
        const unsigned char *src = (const unsigned char *)data.buf;
        unsigned char *dst = (unsigned char *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i + 16 < n)
                __builtin_prefetch(src + at[i + 16]);
            memcpy(dst + i * width, src + at[i], (size_t)width);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&positions);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "gather_rows: bad arguments");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gather_rows", gather_rows, METH_VARARGS, "gather_rows(data, positions, width, out)"},
    {"pcap_chain", pcap_chain, METH_VARARGS,
     "pcap_chain(data, pos, limit, header_size, max_caplen, big_endian, out) -> (n, pos)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_records", "The pcap record walk, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
