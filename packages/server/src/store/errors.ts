/** Driver error codes of a broken unique (or primary key) constraint. */
const UNIQUE_VIOLATION = new Set<unknown>([
  'SQLITE_CONSTRAINT_UNIQUE',
  'SQLITE_CONSTRAINT_PRIMARYKEY', // SQLite reports a duplicate primary key as "UNIQUE constraint failed" too
  '23505', // PostgreSQL's unique_violation
]);

/** Whether an insert or update failed because the row already exists (a name taken). */
export function isUniqueViolation(err: unknown): boolean {
  return UNIQUE_VIOLATION.has((err as { code?: unknown } | null)?.code);
}
