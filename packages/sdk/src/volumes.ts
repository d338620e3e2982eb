import type { HttpClient } from './http.js';
import { MOAT_API_VERSION, type SandboxResource } from './types.js';

/** A named volume: an ext4 `/data` image that can outlive sandboxes (docs/lifecycle.md). */
export interface VolumeInfo {
  namespace: string;
  name: string;
  uid: string;
  /** `1Gi` */
  size: string;
  sizeBytes: number;
  createdAt: string;
  /** The sandbox it is attached to, or null. */
  sandbox: string | null;
  /** Whether it outlives its sandbox. */
  retain: boolean;
}

/** A snapshot in the server's backup store, of a volume or of a sandbox's writable layer: zstd, checksummed. */
export interface BackupInfo {
  namespace: string;
  id: string;
  /** `volume`, or `rootfs`: a sandbox's writable layer (what it changed outside its volume). */
  kind: 'volume' | 'rootfs';
  /** kind volume: the volume. */
  volume?: string;
  /** kind rootfs: the sandbox, its runtime class and its image's digest (a restore runs the same). */
  sandbox?: string;
  runtimeClassName?: string;
  imageDigest?: string;
  sizeBytes: number;
  compressedBytes: number;
  sha256: string;
  /** `local:/dir` or `s3:https://host/bucket` */
  store: string;
  key: string;
  createdAt: string;
  /** Set on the answer to create. */
  durationMs?: number;
}

const enc = encodeURIComponent;

/** Named volumes of a namespace. Sandboxes attach one with `podTemplate.spec.volumes[0].persistentVolumeClaim.claimName`. */
export class VolumesApi {
  constructor(
    private readonly http: HttpClient,
    private readonly namespace: string,
  ) {}

  private get base() {
    return `/apis/${MOAT_API_VERSION}/namespaces/${enc(this.namespace)}/volumes`;
  }

  async list(): Promise<VolumeInfo[]> {
    return (await this.http.json<{ items: VolumeInfo[] }>('GET', this.base)).items;
  }

  get(name: string): Promise<VolumeInfo> {
    return this.http.json('GET', `${this.base}/${enc(name)}`);
  }

  /** An empty volume of `size` (`1Gi`, `500Mi`, bytes), kept until deleted. */
  create(name: string, size: string | number): Promise<VolumeInfo> {
    return this.http.json('POST', this.base, { json: { name, size } });
  }

  /** Deletes the volume and its data; refused (409) while a sandbox has it. */
  async delete(name: string): Promise<void> {
    await this.http.request('DELETE', `${this.base}/${enc(name)}`);
  }
}

/** Backups of a namespace's volumes and sandboxes' writable layers, and restores into new volumes and sandboxes. */
export class BackupsApi {
  constructor(
    private readonly http: HttpClient,
    private readonly namespace: string,
  ) {}

  private get base() {
    return `/apis/${MOAT_API_VERSION}/namespaces/${enc(this.namespace)}/backups`;
  }

  async list(volume?: string): Promise<BackupInfo[]> {
    return (await this.http.json<{ items: BackupInfo[] }>('GET', volume ? `${this.base}?volume=${enc(volume)}` : this.base)).items;
  }

  get(id: string): Promise<BackupInfo> {
    return this.http.json('GET', `${this.base}/${enc(id)}`);
  }

  /**
   * Back up a volume, the volume of a sandbox, or with `rootfs: true` a sandbox's writable layer (with its
   * spec and image digest): consistent (frozen while read), compressed, checksummed.
   */
  create(of: { volume: string } | { sandbox: string; rootfs?: boolean }): Promise<BackupInfo> {
    return this.http.json('POST', this.base, { json: of });
  }

  /** A new volume `volume` from a volume backup, its checksum verified first. */
  restore(id: string, volume: string): Promise<VolumeInfo & { durationMs: number }> {
    return this.http.json('POST', `${this.base}/${enc(id)}/restore`, { json: { volume } });
  }

  /**
   * A new sandbox `sandbox` from a writable-layer (rootfs) backup: the backed-up sandbox's spec and image
   * digest, its writable layer restored (checksum verified first). It starts as any new sandbox does: wait for Ready.
   */
  restoreSandbox(id: string, sandbox: string): Promise<SandboxResource> {
    return this.http.json('POST', `${this.base}/${enc(id)}/restore`, { json: { sandbox } });
  }

  async delete(id: string): Promise<void> {
    await this.http.request('DELETE', `${this.base}/${enc(id)}`);
  }
}
