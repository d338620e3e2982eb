/*
 * The numbers of moat-init's wire protocol (docs/agent-protocol.md).
 *
 * The host has the same numbers in packages/runtime/src/agent/protocol.ts;
 * packages/runtime/test/agent-protocol.test.ts reads this file and fails
 * unless both sides agree, so change them together. It reads every
 * `#define NAME value` and every enumerator, which must have an explicit
 * value: keep what only the agent needs out of this file.
 */
#ifndef MOAT_PROTOCOL_H
#define MOAT_PROTOCOL_H

/* A frame: u8 type, u32 payload length (big endian), payload. */
#define HEADER_SIZE 5u
#define MAX_FRAME (1024u * 1024u)

/* Frame types. */
enum {
	T_EXEC = 0x01, T_READ = 0x02, T_WRITE = 0x03, T_LIST = 0x04, T_STAT = 0x05,
	T_MKDIR = 0x06, T_REMOVE = 0x07, T_RENAME = 0x08, T_PING = 0x09, T_DIAL = 0x0a,
	T_DATA = 0x10, T_EOF = 0x11, T_SIGNAL = 0x12, T_RESIZE = 0x13,
	T_STARTED = 0x20, T_STDOUT = 0x21, T_STDERR = 0x22, T_EXIT = 0x23,
	T_END = 0x24, T_OK = 0x25, T_ENTRY = 0x26, T_ERROR = 0x2f,
};

/*
 * moat-init --mux: many connections over one stdin/stdout. A mux frame: u8
 * type, u32 stream id (big endian), u32 payload length (big endian, at most
 * MAX_FRAME), payload. Each direction of a stream starts with MUX_WINDOW
 * bytes of credit; WINDOW grants more.
 */
#define MUX_HEADER_SIZE 9u
#define MUX_WINDOW (256u * 1024u)
#define MUX_MAX_STREAMS 1024u

/* Mux frame types. */
enum {
	M_OPEN = 0x01, M_DATA = 0x02, M_EOF = 0x03, M_CLOSE = 0x04, M_WINDOW = 0x05, M_HELLO = 0x06,
};

#endif
