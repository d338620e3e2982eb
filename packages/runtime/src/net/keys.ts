/**
 * A sandbox's network key: the first 12 hex digits of its UID, which names
 * its host state (`/run/netns/<name>-<key>`, veth host end `<ifPrefix><key>`)
 * within the 15-character limit of interface names and stays readable next
 * to the UID. Moat's UIDs are random (v4) UUIDs, whose first 48 bits are all
 * random: with n live sandboxes a collision has probability about n²/2⁴⁹
 * (2·10⁻⁹ for a thousand, 2·10⁻⁵ for a hundred thousand). A collision is
 * never silent: creating the second namespace fails because the name exists.
 * Time-ordered UUIDs (v1, v6, v7) would collide within a millisecond, so
 * they are refused.
 */
export const NETWORK_KEY_PATTERN = /^[0-9a-f]{12}$/;

const UUID_V4 = /^([0-9a-f]{8})-([0-9a-f]{4})-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

export function networkKey(uid: string): string {
  const m = UUID_V4.exec(uid.toLowerCase());
  if (!m) throw new Error(`sandbox UID "${uid}" is not a random (v4) UUID`);
  return m[1]! + m[2]!;
}

export function assertNetworkKey(key: string): string {
  if (!NETWORK_KEY_PATTERN.test(key)) throw new Error(`"${key}" is not a sandbox network key (12 lower-case hex digits)`);
  return key;
}
