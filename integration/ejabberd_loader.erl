%% Loads the benchmark's accounts and rosters into a running ejabberd's Mnesia (integration/ejabberd.py).
%%
%% The file written by integration.ejabberd.provisioning_lines is tab-separated: a header with the
%% domain and the #scram{} fields every account shares, then one line per account with its localpart
%% and its contacts' localparts separated by commas. Each account becomes a `passwd` record
%% (ejabberd_auth.hrl) and each contact a `roster` record (mod_roster.hrl), subscription both ways,
%% one dirty write each: 42,000 records in ~1.5 s, where one transaction per account takes five times
%% as long and one for them all minutes (Mnesia may log that its log dumper is overloaded; harmless).
%% Compiled at start-up, since erl_eval runs this loop ten times slower.
-module(nitro_bench_loader).
-export([load/2]).

load(Provisioning, Marker) ->
    try
        {ok, Data} = file:read_file(Provisioning),
        [Header | Users] = binary:split(Data, <<"\n">>, [global, trim_all]),
        [Host, Stored, Server, Salt, Hash, Count] = binary:split(Header, <<"\t">>, [global]),
        Scram = {scram, Stored, Server, Salt, binary_to_atom(Hash), binary_to_integer(Count)},
        lists:foreach(
            fun(Line) -> write(Host, Scram, Line) end, Users),
        ok = file:write_file(Marker, integer_to_list(length(Users)))
    catch Class:Reason ->
        io:format("nitro-bench: cannot load ~s: ~p:~p~n", [Provisioning, Class, Reason]),
        erlang:halt(3)
    end.

write(Host, Scram, Line) ->
    [User, Contacts] = binary:split(Line, <<"\t">>),
    mnesia:dirty_write({passwd, {User, Host}, Scram}),
    lists:foreach(
        fun(Contact) ->
            Jid = {Contact, Host, <<>>},
            mnesia:dirty_write({roster, {User, Host, Jid}, {User, Host}, Jid, <<>>, both, none, [], <<>>, []})
        end,
        binary:split(Contacts, <<",">>, [global, trim_all])).
