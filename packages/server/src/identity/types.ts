import { Type, type Static } from '@sinclair/typebox';

const Quantity = (example: string) => Type.String({ minLength: 1, maxLength: 32, examples: [example] });

/** Limits for a user (over all their agents) or one agent; an absent field is unlimited. */
export const QuotaSchema = Type.Object(
  {
    sandboxes: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })),
    cpu: Type.Optional(Quantity('4')),
    memory: Type.Optional(Quantity('8Gi')),
    storage: Type.Optional(Quantity('50Gi')),
  },
  { additionalProperties: false },
);
export type Quota = Static<typeof QuotaSchema>;
