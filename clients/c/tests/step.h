/*
 * The test drivers' step report: one line per step ("ok …", or "FAIL … [the library's last error]"), flushed
 * at once so the test sees it even if the driver dies next; `failed` decides the exit status.
 */
#ifndef DEVLEASE_TEST_STEP_H
#define DEVLEASE_TEST_STEP_H

#include <devlease.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

static int failed;

static void step(bool ok, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%s ", ok ? "ok" : "FAIL");
	vprintf(fmt, ap);
	va_end(ap);
	if (!ok) printf(" [%s]", devlease_errmsg());
	printf("\n");
	fflush(stdout);
	if (!ok) failed = 1;
}

#endif
