import type { HttpClient } from './http.js';
import { MOAT_API_VERSION } from './types.js';

/** What the API shows of a secret: its value is write-only. */
export interface SecretInfo {
  namespace: string;
  name: string;
  createdAt: string;
  updatedAt: string;
}

const enc = encodeURIComponent;

/** A namespace's secrets. Sandboxes name them in `spec.secrets`; the gateway uses them, sandboxes never see them unless `exposeAsEnv`. */
export class SecretsApi {
  constructor(
    private readonly http: HttpClient,
    private readonly namespace: string,
  ) {}

  private get base() {
    return `/apis/${MOAT_API_VERSION}/namespaces/${enc(this.namespace)}/secrets`;
  }

  async list(): Promise<SecretInfo[]> {
    return (await this.http.json<{ items: SecretInfo[] }>('GET', this.base)).items;
  }

  get(name: string): Promise<SecretInfo> {
    return this.http.json('GET', `${this.base}/${enc(name)}`);
  }

  create(name: string, value: string): Promise<SecretInfo> {
    return this.http.json('POST', this.base, { json: { name, value } });
  }

  replace(name: string, value: string): Promise<SecretInfo> {
    return this.http.json('PUT', `${this.base}/${enc(name)}`, { json: { value } });
  }

  async delete(name: string): Promise<void> {
    await this.http.request('DELETE', `${this.base}/${enc(name)}`);
  }

  /** Admins: a new master key, every secret re-encrypted with it. */
  async rotateKey(): Promise<{ reencrypted: number }> {
    return this.http.json('POST', `/apis/${MOAT_API_VERSION}/secrets/rotate-key`);
  }
}
