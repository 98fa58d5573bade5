/**
 * The one table of MQTT 5 reason codes, and the one mapper to MQTT 3.1/3.1.1 values.
 * Handlers pick a {@link ReasonCode}; they never branch on the protocol version to choose one.
 */
export const ReasonCode = {
  Success: 0x00,
  GrantedQoS1: 0x01,
  GrantedQoS2: 0x02,
  DisconnectWithWill: 0x04,
  NoMatchingSubscribers: 0x10,
  NoSubscriptionExisted: 0x11,
  ContinueAuthentication: 0x18,
  ReAuthenticate: 0x19,
  UnspecifiedError: 0x80,
  MalformedPacket: 0x81,
  ProtocolError: 0x82,
  ImplementationSpecificError: 0x83,
  UnsupportedProtocolVersion: 0x84,
  ClientIdentifierNotValid: 0x85,
  BadUserNameOrPassword: 0x86,
  NotAuthorized: 0x87,
  ServerUnavailable: 0x88,
  ServerBusy: 0x89,
  Banned: 0x8a,
  ServerShuttingDown: 0x8b,
  BadAuthenticationMethod: 0x8c,
  KeepAliveTimeout: 0x8d,
  SessionTakenOver: 0x8e,
  TopicFilterInvalid: 0x8f,
  TopicNameInvalid: 0x90,
  PacketIdentifierInUse: 0x91,
  PacketIdentifierNotFound: 0x92,
  ReceiveMaximumExceeded: 0x93,
  TopicAliasInvalid: 0x94,
  PacketTooLarge: 0x95,
  MessageRateTooHigh: 0x96,
  QuotaExceeded: 0x97,
  AdministrativeAction: 0x98,
  PayloadFormatInvalid: 0x99,
  RetainNotSupported: 0x9a,
  QoSNotSupported: 0x9b,
  UseAnotherServer: 0x9c,
  ServerMoved: 0x9d,
  SharedSubscriptionsNotSupported: 0x9e,
  ConnectionRateExceeded: 0x9f,
  MaximumConnectTime: 0xa0,
  SubscriptionIdentifiersNotSupported: 0xa1,
  WildcardSubscriptionsNotSupported: 0xa2,
} as const;

export type ReasonCode = (typeof ReasonCode)[keyof typeof ReasonCode];

const names = new Map<number, string>(
  Object.entries(ReasonCode).map(([name, code]) => [code, name.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase()]),
);

/** A human-readable name for a reason code, for logs, audit records and reason strings. */
export function reasonName(code: number): string {
  return names.get(code) ?? `reason 0x${code.toString(16)}`;
}

/** MQTT 3.1.1 CONNACK return codes (table 3.1). */
export const ConnackV3 = {
  Accepted: 0,
  UnacceptableProtocolVersion: 1,
  IdentifierRejected: 2,
  ServerUnavailable: 3,
  BadUserNameOrPassword: 4,
  NotAuthorized: 5,
} as const;

/** Maps an MQTT 5 CONNACK reason code to the MQTT 3.1/3.1.1 return code [MQTT-3.2.2-4..6]. */
export function toV3ConnackReturnCode(code: number): number {
  switch (code) {
    case ReasonCode.Success:
      return ConnackV3.Accepted;
    case ReasonCode.UnsupportedProtocolVersion:
      return ConnackV3.UnacceptableProtocolVersion;
    case ReasonCode.ClientIdentifierNotValid:
      return ConnackV3.IdentifierRejected;
    case ReasonCode.BadUserNameOrPassword:
    case ReasonCode.BadAuthenticationMethod:
      return ConnackV3.BadUserNameOrPassword;
    case ReasonCode.NotAuthorized:
    case ReasonCode.Banned:
      return ConnackV3.NotAuthorized;
    default:
      return ConnackV3.ServerUnavailable;
  }
}

/** Maps an MQTT 5 SUBACK reason code to the MQTT 3.1.1 SUBACK return code: granted QoS or 0x80. */
export function toV3SubackCode(code: number): number {
  return code <= ReasonCode.GrantedQoS2 ? code : 0x80;
}

/** True when the code reports a failure (0x80 and above). */
export function isFailure(code: number): boolean {
  return code >= 0x80;
}
