// Error shapes of src/sys, from the one error model (src/errors.ts). Syscall
// failures (from the addon or from here) are SysError: `code` ('EPIPE'),
// `errno` (32) and `syscall` ('sendmsg'); misuse is a MisuseError with an
// ERR_DEVLEASE_* code, thrown before any syscall.
export { closedError, isSysError, type MisuseCode, MisuseError, misuse, SysError } from '../errors.js';
