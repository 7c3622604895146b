// Type declarations of sluice.js (see README.md).

export type Transport = 'websocket' | 'sse' | 'longpoll';

export interface Message {
  /** Opaque, strictly increasing per topic; what the client resumes from. */
  id: string;
  topic: string;
  /** The event name, or null. */
  event: string | null;
  /** Text, or the bytes of binary data (base64 on the wire).  A message
   *  published as JSON that came embedded is its value re-serialized
   *  (the same value; whitespace may differ from what was published). */
  data: string | Uint8Array;
  /** Over WebSocket and long-poll: the value of a message published as
   *  JSON (Content-Type: application/json); absent otherwise and over SSE. */
  json?: unknown;
}

export interface Options {
  /** Transports to try, in order (default: websocket, sse, longpoll). */
  transports?: Transport[];
  /** Resume after this ID (the client then keeps its own). */
  lastEventId?: string;
  /** Reconnect delays in ms: full jitter under min * 2^attempt, capped at max. */
  backoff?: { min?: number; max?: number };
  /** ms to wait for the first bytes of an SSE stream before giving it up (default 5000). */
  sseTimeout?: number;
  /** Long-poll timeout in seconds (default 25). */
  pollTimeout?: number;
  /** Path prefix of topics (default "/topics/"). */
  path?: string;
  /** The whole URL to subscribe at, instead of path + topic. */
  url?: string;
  /** Extra request headers for SSE, long-poll and publish (not WebSocket). */
  headers?: Record<string, string>;
}

export interface ClientOptions extends Options {
  /** A WebSocket constructor (Node < 22: the `ws` package). */
  WebSocket?: unknown;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface EventMap {
  message: Message;
  /** A member joined or left the topic (the app subscribed with presence_events). */
  presence: { type: 'join' | 'leave'; topic: string; member: string; info: unknown; id: string };
  open: { transport: Transport };
  /** Messages before the replayed ones were missed (retention passed them). */
  gap: { topic: string; transport: Transport };
  /** A connection failed or ended; `opened` tells whether it had been up. */
  error: { transport: Transport; error: unknown; opened?: boolean };
  reconnect: { transport: Transport; delay: number };
  close: { transport: Transport | null };
}

export declare class Subscription {
  readonly topic: string;
  /** ID of the last message handed over, or null. */
  readonly lastId: string | null;
  /** The transport in use or being tried. */
  readonly transport: Transport | null;
  readonly closed: boolean;
  on<K extends keyof EventMap>(type: K, fn: (ev: EventMap[K]) => void): this;
  off<K extends keyof EventMap>(type: K, fn: (ev: EventMap[K]) => void): this;
  close(): void;
}

export interface PublishOptions {
  event?: string;
  /** Retries with the same key store the message once. */
  idempotencyKey?: string;
  headers?: Record<string, string>;
  url?: string;
}

export declare class Sluice {
  constructor(url?: string, opts?: ClientOptions);
  readonly url: string;
  subscribe(topic: string, opts?: Options): Subscription;
  /** Resolves once the message is durable; rejects with an Error carrying `status`. */
  publish(topic: string, data: string | Uint8Array | Blob | ArrayBuffer, opts?: PublishOptions): Promise<{ id: string }>;
}

export default Sluice;
