/**
 * Registers the topic contracts with a Confluent-compatible Schema Registry (Apicurio's ccompat API
 * locally), subject `<topic>-value`, under the registry's BACKWARD rule. Every schema is checked
 * locally against the subject's latest version before anything is registered, so an incompatible
 * change is refused here with a clear message and never reaches the registry.
 */
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { isDeepStrictEqual } from 'node:util';
import { AppError, errorMessage, isAppError, permanentError, retryableError } from '../errors.ts';
import { checkBackwardCompatible, topicContract, valueSubject, TOPICS, type TopicName } from './schemas.ts';

export interface RegisterSchemasOptions {
  /** Base URL of the Confluent-compatible API, e.g. http://127.0.0.1:18081/apis/ccompat/v7. */
  registryUrl: string;
  schemasDir: string;
  /** Defaults to every topic. */
  topics?: readonly TopicName[];
  /** Prepended to each subject (tests use a random one so they never touch the real subjects). */
  subjectPrefix?: string;
}

export interface SchemaRegistration {
  topic: TopicName;
  subject: string;
  /** The registry's global schema id. */
  id: number;
  /** `unchanged` when the subject's latest version already is this schema. */
  status: 'registered' | 'unchanged';
}

export interface RegisteredVersion {
  subject: string;
  id: number;
  version: number;
  schema: string;
}

function baseUrl(url: string): string {
  return url.replace(/\/+$/, '');
}

async function registryRequest(url: string, what: string): Promise<Response> {
  try {
    return await fetch(url, { headers: { accept: 'application/vnd.schemaregistry.v1+json, application/json' }, signal: AbortSignal.timeout(10_000) });
  } catch (error) {
    throw retryableError('SCHEMA_REGISTRY_UNAVAILABLE', `${what}: cannot reach the schema registry at ${url}: ${errorMessage(error)}`, error);
  }
}

function statusError(what: string, response: Response, body: string): AppError {
  const message = `${what}: the schema registry answered HTTP ${response.status}: ${body.slice(0, 500)}`;
  return response.status >= 500 || response.status === 429
    ? retryableError('SCHEMA_REGISTRY_ERROR', message, undefined, { status: response.status })
    : permanentError('SCHEMA_REGISTRY_ERROR', message, undefined, { status: response.status });
}

/** The latest registered version of a subject, or null when the subject does not exist (404). */
export async function latestVersion(registryUrl: string, subject: string): Promise<RegisteredVersion | null> {
  const what = `subject ${subject}`;
  const response = await registryRequest(`${baseUrl(registryUrl)}/subjects/${encodeURIComponent(subject)}/versions/latest`, what);
  const body = await response.text();
  if (response.status === 404) return null;
  if (!response.ok) throw statusError(what, response, body);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch (error) {
    throw permanentError('SCHEMA_REGISTRY_ERROR', `${what}: the schema registry answered with something that is not JSON: ${body.slice(0, 200)}`, error);
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const { id, version, schema } = record;
  if (typeof id !== 'number' || typeof version !== 'number' || typeof schema !== 'string') {
    throw permanentError('SCHEMA_REGISTRY_ERROR', `${what}: unexpected answer from the schema registry (want id, version, schema): ${body.slice(0, 200)}`);
  }
  return { subject, id, version, schema };
}

/** Every version number registered under a subject ([] when the subject does not exist). */
export async function subjectVersions(registryUrl: string, subject: string): Promise<number[]> {
  const what = `subject ${subject}`;
  const response = await registryRequest(`${baseUrl(registryUrl)}/subjects/${encodeURIComponent(subject)}/versions`, what);
  const body = await response.text();
  if (response.status === 404) return [];
  if (!response.ok) throw statusError(what, response, body);
  const parsed: unknown = JSON.parse(body);
  if (!Array.isArray(parsed) || !parsed.every((v) => typeof v === 'number')) {
    throw permanentError('SCHEMA_REGISTRY_ERROR', `${what}: unexpected list of versions from the schema registry: ${body.slice(0, 200)}`);
  }
  return parsed;
}

function sameSchema(registered: string, local: object): boolean {
  try {
    return isDeepStrictEqual(JSON.parse(registered), local);
  } catch {
    return false;
  }
}

/** Classifies an error of @kafkajs/confluent-schema-registry's `register`. */
function registrationError(subject: string, error: unknown): AppError {
  if (isAppError(error)) return error;
  const status = typeof error === 'object' && error !== null && 'status' in error ? Number((error).status) : undefined;
  const message = errorMessage(error);
  if (status === 409 || (error instanceof Error && error.name === 'ConfluentSchemaRegistryCompatibilityError')) {
    return permanentError('SCHEMA_INCOMPATIBLE', `${subject}: the schema registry refused the schema as incompatible: ${message}`, error, { subject });
  }
  if (status === 422) return permanentError('SCHEMA_INVALID', `${subject}: the schema registry refused the schema as invalid: ${message}`, error, { subject });
  if (status !== undefined && status >= 400 && status < 500) {
    return permanentError('SCHEMA_REGISTRY_ERROR', `${subject}: registration failed with HTTP ${status}: ${message}`, error, { subject });
  }
  return retryableError('SCHEMA_REGISTRY_UNAVAILABLE', `${subject}: registration failed: ${message}`, error, { subject });
}

/**
 * Registers each topic's schema under `<subjectPrefix><topic>-value`. All schemas are checked
 * first (each against its subject's latest version, locally); only when every one passes does any
 * registration happen, so a failed run changes nothing.
 */
export async function registerSchemas(options: RegisterSchemasOptions): Promise<SchemaRegistration[]> {
  const topics = options.topics ?? TOPICS;
  const prefix = options.subjectPrefix ?? '';

  const planned = [];
  for (const topic of topics) {
    const contract = topicContract(topic, options.schemasDir);
    const subject = `${prefix}${valueSubject(topic)}`;
    const latest = await latestVersion(options.registryUrl, subject);
    if (latest) checkBackwardCompatible(latest.schema, contract.schema, subject);
    planned.push({ topic, subject, contract, latest });
  }

  const registry = new SchemaRegistry({ host: baseUrl(options.registryUrl), clientId: 'agent-manager' });
  const results: SchemaRegistration[] = [];
  for (const { topic, subject, contract, latest } of planned) {
    if (latest && sameSchema(latest.schema, contract.schema)) {
      results.push({ topic, subject, id: latest.id, status: 'unchanged' });
      continue;
    }
    let id: number;
    try {
      ({ id } = await registry.register({ type: SchemaType.AVRO, schema: contract.schemaText }, { subject }));
    } catch (error) {
      throw registrationError(subject, error);
    }
    results.push({ topic, subject, id, status: latest?.id === id ? 'unchanged' : 'registered' });
  }
  return results;
}
